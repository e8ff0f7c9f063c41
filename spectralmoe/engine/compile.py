"""``torch.compile`` of a Segmentor, in place (the ``model.compile: true`` switch of a config).

``nn.Module.compile`` compiles the module's ``__call__`` without wrapping it, so parameter names, state
dicts and checkpoints are the same as without compilation, and ``Segmentor.loss`` / ``predict_logits``
(which call the module) run compiled. Compilation happens lazily on the first call and again for new
input shapes. SpectralMoE switches to its sync-free expert dispatch inside a compiled graph.
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: Keyword arguments of ``torch.compile`` a config may set under ``compile_options``.
COMPILE_OPTIONS = frozenset({"backend", "mode", "fullgraph", "dynamic", "options"})


def compile_segmentor(segmentor: nn.Module, options: dict[str, Any] | None = None) -> nn.Module:
    """Compile ``segmentor``'s forward in place with ``torch.compile(**options)``; returns it."""
    options = dict(options or {})
    unknown = sorted(set(options) - COMPILE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown compile option(s) {unknown}; allowed: {sorted(COMPILE_OPTIONS)}")
    segmentor.compile(**options)
    return segmentor
