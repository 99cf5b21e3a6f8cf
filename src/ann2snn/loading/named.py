"""Models by name from the timm and torchvision catalogues: ``timm:NAME`` and ``torchvision:NAME``.

The architecture is built with ``timm.create_model(NAME, pretrained=False)`` or
``torchvision.models.get_model(NAME, weights=None)``: nothing is ever downloaded, the model has random
weights until a local checkpoint (``state_dict`` or ``.safetensors``) is loaded into it. Keyword
arguments for the builder go in parentheses, as Python literals: ``timm:resnet18(num_classes=10)``.
"""

from __future__ import annotations

import ast
import importlib
from typing import Any

from torch import nn

from ..errors import LoadError

__all__ = ["CATALOGUES", "build_named", "parse_named"]

# prefix -> (package to import, how to install it)
CATALOGUES = {"timm": ("timm", "pip install timm"), "torchvision": ("torchvision", "pip install torchvision")}


def parse_named(spec: str) -> tuple[str, str, dict[str, Any]] | None:
    """``("timm", "resnet18", {"num_classes": 10})`` for ``timm:resnet18(num_classes=10)``; None if
    ``spec`` does not name a catalogue."""
    catalogue, sep, rest = spec.partition(":")
    if not sep or catalogue not in CATALOGUES:
        return None
    rest = rest.strip()
    kwargs: dict[str, Any] = {}
    if rest.endswith(")") and "(" in rest:
        name, _, args = rest[:-1].partition("(")
        try:
            call = ast.parse(f"f({args})", mode="eval").body
            if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
                raise ValueError("only keyword arguments")
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError) as exc:
            raise LoadError(f"model {spec!r}: the arguments in parentheses must be keyword=literal pairs, "
                            f"e.g. {catalogue}:{name.strip() or 'NAME'}(num_classes=10) ({exc})") from None
        rest = name.strip()
    if not rest:
        raise LoadError(f"model {spec!r}: give the architecture's name, e.g. {catalogue}:resnet18")
    return catalogue, rest, kwargs


def _package(catalogue: str, spec: str):
    package, install = CATALOGUES[catalogue]
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        if (getattr(exc, "name", None) or package) == package:
            raise LoadError(f"model {spec!r} needs the '{package}' package, which is not installed: "
                            f"{install}") from None
        raise LoadError(f"model {spec!r} needs the '{package}' package, which cannot be imported here "
                        f"({str(exc).splitlines()[0]}): {install}") from None
    except Exception as exc:  # noqa: BLE001 - a broken install can raise anything at import
        raise LoadError(f"model {spec!r}: importing '{package}' failed: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def build_named(spec: str) -> nn.Module:
    """The architecture named by ``timm:NAME`` / ``torchvision:NAME``, with random weights."""
    parsed = parse_named(spec)
    if parsed is None:
        raise LoadError(f"model {spec!r} does not name a catalogue ({', '.join(f'{c}:NAME' for c in CATALOGUES)})")
    catalogue, name, kwargs = parsed
    for key in ("pretrained", "weights", "pretrained_cfg_overlay", "checkpoint_path"):
        if key in kwargs:
            raise LoadError(f"model {spec!r}: {key}= is not accepted (nothing is downloaded); give a local "
                            f"checkpoint with --weights")
    lib = _package(catalogue, spec)
    try:
        if catalogue == "timm":
            model = lib.create_model(name, pretrained=False, **kwargs)
        else:
            model = importlib.import_module("torchvision.models").get_model(name, weights=None, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unknown names, bad keyword arguments, and more
        text = str(exc).strip().splitlines()
        lister = "timm.list_models()" if catalogue == "timm" else "torchvision.models.list_models()"
        raise LoadError(f"building {spec} failed: {type(exc).__name__}: {text[0] if text else ''} "
                        f"(the names are in {lister})") from exc
    if not isinstance(model, nn.Module):
        raise LoadError(f"{spec} built a {type(model).__name__}, not a torch.nn.Module")
    return model
