"""Exchange formats for converted SNNs: NIR graphs for neuromorphic hardware (:mod:`.nir`) and a
portable JSON + safetensors format (:mod:`.portable`). (ANNs come in through :mod:`ann2snn.loading`,
ONNX files included.)

All exporters write the flat layer list of :mod:`.ir`; each has an importer that rebuilds the same
model, with bit-identical outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..model import SpikingModel

__all__ = ["export_nir", "import_nir", "load_portable", "load_snn", "save_portable", "to_nir"]


def __getattr__(name: str):
    # lazily, so that `import ann2snn.export` does not need nir
    if name in ("export_nir", "import_nir", "to_nir"):
        from . import nir

        return getattr(nir, name)
    if name in ("load_portable", "save_portable"):
        from . import portable

        return getattr(portable, name)
    raise AttributeError(name)


def load_snn(path: str | os.PathLike) -> SpikingModel:
    """A spiking model from any file ann2snn writes: ``.nir`` (NIR), a portable folder
    (``graph.json`` + ``weights.safetensors``), or a file from :func:`ann2snn.save`."""
    p = Path(path)
    if p.suffix.lower() == ".nir":
        from .nir import import_nir

        return import_nir(p)
    if p.is_dir():
        from .portable import load_portable

        return load_portable(p)
    from ..serialize import load

    return load(p)
