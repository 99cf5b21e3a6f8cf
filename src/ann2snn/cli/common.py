"""Pieces shared by the subcommands: one-line errors, config flags, data and progress options."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import config as config_module
from ..config import ConversionConfig
from ..errors import ConfigError, ConversionError


class UsageError(ConversionError):
    """Bad command-line input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error becomes a :class:`UsageError` (one line, no usage dump)."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{self.prog.removeprefix('ann2snn ')}: {message}" if " " in self.prog else message)


def one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else "unknown error"


# -- argument types --------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def any_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def float_list(text: str) -> float | list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected a number")
    return values[0] if len(values) == 1 else values


# -- conversion config as flags --------------------------------------------------------------------

def _choices_for(name: str) -> tuple[str, ...] | None:
    """The allowed values of a config field, from config.py's constants (THRESHOLD_METHODS, NEURONS, ...)."""
    upper = name.upper()
    for const in (upper + "S", upper + "_METHODS", upper[:-1] + "IES", upper):
        value = getattr(config_module, const, None)
        if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            return value
    return None


def _field_docs() -> dict[str, str]:
    """Each field's description from the ``Attributes:`` section of ConversionConfig's docstring."""
    docs: dict[str, str] = {}
    current: list[str] = []
    in_attrs = False
    for line in (ConversionConfig.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            in_attrs = True
            continue
        if not in_attrs or not stripped:
            continue
        head, sep, rest = stripped.partition(": ")
        names = [h.strip() for h in head.split(",")]
        if sep and all(n.isidentifier() for n in names) and len(line) - len(line.lstrip()) <= 8:
            current = names
            for n in names:
                docs[n] = rest
        elif current:
            for n in current:
                docs[n] += " " + stripped
    return {k: v.replace("``", "").rstrip(".").replace("%", "%%") for k, v in docs.items()}


_SKIP = {"progress", "extra"}  # progress: --quiet; extra: config file only


def config_fields() -> list[tuple[str, Any]]:
    """(name, resolved type) of every ConversionConfig field that has a flag."""
    hints = typing.get_type_hints(ConversionConfig)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(ConversionConfig) if f.name not in _SKIP]


def _parser_for(name: str, tp: Any):
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    page = config_module.FIELD_PAGE.get(name)
    see = f" (see {page})" if page else ""
    if base is bool:
        def parse(text: str) -> bool | None:
            low = text.lower()
            if optional and low == "none":
                return None
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}{see}")
        return parse, "BOOL"
    simple = base if base in (int, float, str) else str

    def parse_simple(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return simple(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {simple.__name__}, got {text!r}{see}") from None
    return parse_simple, {int: "N", float: "X", str: "NAME"}[simple]


def group_description(group: config_module.FieldGroup, width: int = 92) -> str | None:
    """``how thresholds are calibrated; see docs/methods/thresholds.md``: the help text of a flag group
    (wrapped: the commands print their descriptions as written)."""
    pages = [p for p in group.pages if p]
    see = "see " + ", ".join(pages) if pages else ""
    text = "; ".join(part for part in (group.summary, see) if part)
    return textwrap.fill(text, width, break_on_hyphens=False) if text else None


def add_config_flags(parser: argparse.ArgumentParser, other: str | None = None,
                     own: Callable[[argparse._ArgumentGroup], None] | None = None) -> argparse._ArgumentGroup:
    """One ``--flag`` per ConversionConfig field (``--burst-cap`` for ``burst_cap``; default None =
    unset), in the argument groups of :data:`ann2snn.config.CONFIG_GROUPS` (thresholds, neurons,
    corrections, SSC, IAT, output and other), plus ``--config FILE``. The last group, "output and
    other" (described by ``other``), starts with the flags that ``own`` adds to it; it is returned."""
    defaults = ConversionConfig()
    docs = _field_docs()
    flagged = dict(config_fields())
    group = parser
    for key, spec in config_module.CONFIG_GROUPS.items():
        description = other if key == "other" else group_description(spec)
        group = parser.add_argument_group(spec.title, description)
        if key == "other" and own is not None:
            own(group)
        for name in spec.fields:
            if name not in flagged:
                continue
            text = docs.get(name, f"ConversionConfig.{name}")
            if flagged[name] is bool:  # --iat / --no-iat
                group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", default=None,
                                   action=argparse.BooleanOptionalAction,
                                   help=f"{text} (default: {getattr(defaults, name)})")
                continue
            parse, metavar = _parser_for(name, flagged[name])
            choices = _choices_for(name)
            if choices:
                metavar = "{" + ",".join(choices) + "}"
            group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", type=parse, default=None,
                               metavar=metavar, help=f"{text} (default: {getattr(defaults, name)})")
    group.add_argument("--config", metavar="FILE", help="a .toml (or .yaml, with PyYAML) file of config fields "
                       "(any of the flags above, named as in ConversionConfig); flags win")
    return group


def read_config_file(path: str) -> dict[str, Any]:
    """The config fields in a TOML / YAML file: top-level keys, or the ``[conversion]`` table."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot parse {p}: {one_line(str(exc))}") from exc
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"reading {p} needs PyYAML (pip install pyyaml); or write the config as .toml") from None
        try:
            data = yaml.safe_load(p.read_text())
        except Exception as exc:  # noqa: BLE001 - yaml.YAMLError and decoding errors
            raise ConfigError(f"cannot parse {p}: {one_line(str(exc))}") from exc
        data = {} if data is None else data
    else:
        raise ConfigError(f"config file {p} must end in .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a table of config fields, got {type(data).__name__}")
    for table in ("conversion", "convert", "config"):
        if isinstance(data.get(table), dict):
            rest = {k: v for k, v in data.items() if k != table}
            data = {**rest, **data[table]}
            break
    return data


def build_config(args: argparse.Namespace) -> ConversionConfig:
    """ConversionConfig from ``--config FILE`` then the flags (flags override the file)."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    for name, _tp in config_fields():
        v = getattr(args, f"cfg_{name}", None)
        if v is not None:
            values[name] = v
    if getattr(args, "quiet", False):
        values["progress"] = False
    try:
        return ConversionConfig.from_dict(values)
    except TypeError as exc:  # e.g. a TOML table where a number belongs
        raise ConfigError(f"invalid configuration: {one_line(str(exc))}") from exc


# -- shared options --------------------------------------------------------------------------------

MODEL_HELP = ("a zoo name (see `ann2snn zoo`), 'timm:NAME' or 'torchvision:NAME' (built without downloading: "
              "random weights unless --weights), 'package.module:factory', an .onnx file, or a pickled model "
              "file (with --trust-pickle)")
WEIGHTS_HELP = ("a checkpoint for the model: a state_dict saved with torch.save (read weights_only, onto the CPU; "
                "wrappers such as {'state_dict': ...} and 'module.' / '_orig_mod.' prefixes are adapted, and "
                "said on stderr) or a .safetensors file")
TRUST_HELP = ("allow MODEL to be a pickled nn.Module file, and --weights to hold pickled Python objects "
              "(unpickling runs code from the file)")


MODEL_GROUP = ("model and weights", "the network to convert and its checkpoint; how it is captured: see docs/capture.md")


def add_model_options(parser: argparse.ArgumentParser, positional: bool = False) -> argparse._ArgumentGroup:
    """MODEL (``--model`` or positional), ``--weights``, ``--trust-pickle`` in a group (returned, for more)."""
    group = parser.add_argument_group(*MODEL_GROUP)
    if positional:
        group.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    else:
        group.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    group.add_argument("--weights", metavar="CKPT", help=WEIGHTS_HELP)
    group.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    return group


def print_notes(loaded) -> None:
    """What loading the model did beyond the obvious (adapted checkpoint, random weights): stderr, one line each."""
    from .. import distributed as D

    if not D.is_main():  # under torchrun, rank 0 speaks for all
        return
    for note in getattr(loaded, "notes", []):
        print(f"ann2snn: {loaded.name}: {note}", file=sys.stderr)



def add_data_options(parser: argparse.ArgumentParser, required: bool = True,
                     description: str | None = None) -> argparse._ArgumentGroup:
    """``--data``, ``--mean``, ``--std``, ``--batch-size`` in a "data" group (returned, for more)."""
    note = "" if required else " (default: the data the model was converted with)"
    group = parser.add_argument_group("data", description)
    group.add_argument("--data", required=required, metavar="DATA",
                        help="digits | mnist | fashion-mnist | a .npz with x/y | a folder of images per class" + note)
    group.add_argument("--mean", type=float_list, default=None,
                        help="normalise .npz / folder data: mean (one value or per channel, comma-separated)")
    group.add_argument("--std", type=float_list, default=None, help="normalise .npz / folder data: std")
    group.add_argument("--batch-size", type=positive_int, default=128, metavar="B", help="batch size (default: 128)")
    return group


def add_quiet(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars (they only show on a terminal anyway)")


def progress_flag(args: argparse.Namespace) -> bool | None:
    """False with --quiet; None: bars only when stderr is a terminal."""
    return False if getattr(args, "quiet", False) else None


def check_writable_file(path: str) -> Path:
    """Fail before any long work if ``path`` cannot be written."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"output path {p} is a folder; give a file name such as {p / 'snn.pt'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"cannot write {p}: permission denied")
    return p


def check_output_dir(path: str) -> Path:
    """Fail before any long work if the report folder ``path`` cannot be created or written.

    The folder itself is created only when the report is written, so a failed run leaves nothing.
    """
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"report folder {p} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into report folder {p}: permission denied")
        return p
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot create report folder {p}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create report folder {p}: {ancestor} is not writable")
    return p


def neuron_words(cfg: ConversionConfig) -> str:
    """``if``, ``adafire``, ``signed if, step cap 4``: the neuron kind for one-line summaries."""
    words = ("signed " if cfg.signed else "") + cfg.neuron
    return words + (f", step cap {cfg.step_cap}" if cfg.step_cap > 1 else "")
