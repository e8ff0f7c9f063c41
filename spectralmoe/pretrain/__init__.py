"""Pretraining the small SYNTHETIC-world foundation models shipped in ``spectralmoe/weights/``.

No real foundation-model weights can be downloaded where this product is developed and
demonstrated, so the demo's frozen models are pretrained here, on CPU, on the package's own
synthetic world (every sensor and region):

* ``vision`` — a tiny DINOv2 (``Dinov2Model``, patch 16) by masked-patch reconstruction;
* ``depth`` — a tiny Depth Anything (``DepthAnythingForDepthEstimation``) predicting height maps
  from RGB;
* ``corpus`` — the tiles both learn from, rendered in memory;
* ``run`` — the command (``python scripts/pretrain_synthetic.py`` or ``python -m
  spectralmoe.pretrain``) that trains both deterministically and writes ``save_pretrained``
  folders with a ``PROVENANCE.json`` (command, seed, versions, SHA-256, measurements).

The models are synthetic: they know nothing of real imagery.
"""

from spectralmoe.pretrain.corpus import PretrainCorpus, build_corpus, standardize_per_image
from spectralmoe.pretrain.depth import build_depth_model, height_correlation, pretrain_depth
from spectralmoe.pretrain.vision import build_vision_model, linear_probe, pretrain_vision

__all__ = [
    "PretrainCorpus",
    "build_corpus",
    "build_depth_model",
    "build_vision_model",
    "height_correlation",
    "linear_probe",
    "pretrain_depth",
    "pretrain_vision",
    "standardize_per_image",
]
