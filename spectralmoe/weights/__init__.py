"""Small SYNTHETIC-world foundation models shipped inside the package (a few MB, safetensors).

Real foundation-model weights cannot be downloaded on the machines this product is developed and
demonstrated on, so ``scripts/pretrain_synthetic.py`` pretrains two tiny models, on CPU, on the
package's own synthetic world (``spectralmoe.data.synthetic``) and commits what ``save_pretrained``
writes here:

* ``synthetic-dinov2/`` — a NIR,R,G,B ``Dinov2Model`` (patch 16) pretrained with dense supervision
  on the world's materials, surface types and heights, through every sensor of the world;
  backbone preset ``synthetic-dinov2``.
* ``synthetic-depth-anything/`` — a ``DepthAnythingForDepthEstimation`` (encoder started from the
  backbone) trained to predict the world's height maps from RGB; depth preset
  ``synthetic-depth-anything``.

Each folder holds ``config.json``, ``model.safetensors`` and ``PROVENANCE.json`` (the command, seed,
library versions, SHA-256 of the weights and the measurements: ridge probes per demo domain against
raw pixels, height correlation; ``scripts/pretrain_synthetic.py --measure`` recomputes them). They load through the same ``from_pretrained`` path
as hub checkpoints; they know nothing about real imagery.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["packaged_weights", "WEIGHTS_PACKAGE"]

WEIGHTS_PACKAGE = "spectralmoe.weights"


def packaged_weights(name: str) -> Path:
    """The folder ``spectralmoe/weights/<name>`` of the installed package (it must exist)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"packaged weights are named by one folder name, got {name!r}")
    folder = Path(str(resources.files(WEIGHTS_PACKAGE) / name))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"packaged weights {name!r} are missing at {folder} (no config.json); regenerate them with "
            f"`python scripts/pretrain_synthetic.py --out spectralmoe/weights` or reinstall the package"
        )
    return folder
