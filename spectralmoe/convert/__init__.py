"""Readers of foreign checkpoint formats: the authors' and Rein's mmseg/mmdet files and their converted
backbone files → our modules and export folder (DESIGN §3).

* :mod:`~spectralmoe.convert.safe_pickle` — read a ``.pth`` without mmengine and without running code;
* :mod:`~spectralmoe.convert.mmseg` — route its keys (head, adapter) and read the adapter's sizes;
* :mod:`~spectralmoe.convert.mask2former` — mmdet Mask2Former head → our transformers-based head;
* :mod:`~spectralmoe.convert.frozen` — original DINOv3 / DINOv2 (+ Prompt Depth Anything) files → transformers;
* :mod:`~spectralmoe.convert.importer` — all of it into an export folder (``spectralmoe import-checkpoint``).

The names below are imported on first use, so ``spectralmoe --help`` does not pay for transformers.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DEFAULT_EVALUATION": "spectralmoe.convert.importer",
    "ImportResult": "spectralmoe.convert.importer",
    "import_checkpoint": "spectralmoe.convert.importer",
    "UnsafeCheckpointError": "spectralmoe.convert.safe_pickle",
    "read_checkpoint": "spectralmoe.convert.safe_pickle",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
