"""Pretraining the small SYNTHETIC-world foundation models shipped in ``spectralmoe/weights/``.

No real foundation-model weights can be downloaded where this product is developed and
demonstrated, so the demo's frozen models are pretrained here, on CPU, on the package's own
synthetic world (every sensor and region):

* ``corpus`` — the tiles both learn from, rendered in memory with what the ground is made of;
* ``inputs`` — what each model sees: exactly what it is fed inside a ``Segmentor``;
* ``vision`` — a tiny DINOv2 (``Dinov2Model``, patch 16), dense supervision on the world's
  materials, surface types and heights;
* ``depth`` — a tiny Depth Anything (``DepthAnythingForDepthEstimation``) predicting height maps
  from RGB;
* ``probe`` — the measurements: ridge probes per demo domain against raw pixels, height correlation;
* ``run`` — the command (``python scripts/pretrain_synthetic.py`` or ``python -m
  spectralmoe.pretrain``) that trains both deterministically and writes ``save_pretrained``
  folders with a ``PROVENANCE.json`` (command, seed, versions, SHA-256, measurements).

The models are synthetic: they know nothing of real imagery.
"""

from spectralmoe.pretrain.corpus import PretrainCorpus, build_corpus
from spectralmoe.pretrain.depth import build_depth_model, pretrain_depth
from spectralmoe.pretrain.probe import domain_probe, height_correlation, probe_tiles
from spectralmoe.pretrain.vision import build_vision_model, pretrain_vision

__all__ = [
    "PretrainCorpus",
    "build_corpus",
    "build_depth_model",
    "build_vision_model",
    "domain_probe",
    "height_correlation",
    "pretrain_depth",
    "pretrain_vision",
    "probe_tiles",
]
