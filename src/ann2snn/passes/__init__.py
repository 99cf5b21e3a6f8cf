"""Graph passes: each a function GraphModule -> GraphModule that can be printed and tested alone."""
