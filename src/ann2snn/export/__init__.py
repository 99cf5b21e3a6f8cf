"""Exporting converted SNNs: NIR graphs for neuromorphic hardware and a portable safetensors + JSON format."""
