"""LoRA baseline (BASELINES.md "LoRA"): low-rank updates of the frozen attention projections.

Every targeted projection ``W`` of every block becomes ``W x + (α/r)·B A x`` with ``A ∈ R^{r×D}``
(Kaiming-uniform) and ``B ∈ R^{D_out×r}`` (zero), so the model starts as the frozen backbone. The
layers are injected by ``peft`` (``inject_adapter_in_model``) into the backbone's own modules: the
LoRA weights live *inside* the backbone (parameter names contain ``"lora_"``) and are its only
parameters that require gradients; the adapter module itself holds no parameters and its
``forward`` is the identity. The segmentor's accounting counts trainable backbone parameters as the
method's, and :meth:`LoRA.num_trainable_parameters` counts them too.

Projection names per family (``ATTENTION_PROJECTIONS``, paths inside one block):

======================  ===============================  =================
family                  q / k / v                        o
======================  ===============================  =================
DINOv2, DINOv3          ``attention.{q,k,v}_proj``       ``attention.o_proj``
CLIP                    ``self_attn.{q,k,v}_proj``       ``self_attn.out_proj``
SAM, DOFA, Copernicus   ``attn.qkv`` (fused, D → 3D)     ``attn.proj``
EVA-02                  ``attn.{q,k,v}_proj``            ``attn.proj``
======================  ===============================  =================

**Fused qkv (SAM, DOFA).** A fused projection cannot take separate q and v updates with peft, so
any of ``q``/``k``/``v`` selects the whole ``qkv`` Linear once: one rank-r update ``B A`` with
``B ∈ R^{3D×r}`` shared by q, k and v (k is adapted too). For the default ``("q", "v")`` the count
happens to be the same, ``r·(D + 3D) = 2·r·(D + D)`` per block, but the function differs from the
paper's q+v setting; ``("q",)`` alone costs twice the split count.

The state-dict keys of a wrapped projection change (``q_proj.weight`` → ``q_proj.base_layer.weight``),
so frozen weights must be loaded before :meth:`LoRA.attach` (the segmentor attaches after building).
"""

from __future__ import annotations

import logging
import re
from typing import Mapping, Sequence

from torch import nn

from spectralmoe.models.adapters.base import Adapter

logger = logging.getLogger(__name__)

__all__ = ["ATTENTION_PROJECTIONS", "LORA_PARAMS_VIT_L", "LoRA", "block_layout", "check_backbone_sizes"]

#: Trainable parameters of ``LoRA`` on a ViT-L (r = 8 on W_q and W_v of 24 blocks) — the paper's 0.79 M.
LORA_PARAMS_VIT_L = 786_432

#: peft adapter name; it appears in parameter names (``...q_proj.lora_A.default.weight``).
PEFT_ADAPTER_NAME = "default"

_SPLIT_DINO = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj"}
_SPLIT_CLIP = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj"}
_FUSED = {"q": "attn.qkv", "k": "attn.qkv", "v": "attn.qkv", "o": "attn.proj"}
_SPLIT_EVA = {"q": "attn.q_proj", "k": "attn.k_proj", "v": "attn.v_proj", "o": "attn.proj"}

#: family → {projection: module path inside a block}. Order matters for backbones without a
#: ``family`` attribute (DOFA): the first layout whose modules all exist in block 0 is used.
ATTENTION_PROJECTIONS: dict[str, dict[str, str]] = {
    "dinov3": _SPLIT_DINO,
    "dinov2": _SPLIT_DINO,
    "clip": _SPLIT_CLIP,
    "dofa": _FUSED,
    "sam": _FUSED,
    "eva02": _SPLIT_EVA,
}

_TARGETS = ("q", "k", "v", "o")


def block_layout(backbone: nn.Module, layouts: Mapping[str, Mapping[str, str]]) -> tuple[str, Mapping[str, str]]:
    """``(family, paths)`` of the backbone's blocks from a family → {role: module path} table.

    The family is the wrapper's ``family`` attribute (transformers wrappers have one); a backbone
    without it (DOFA) gets the first layout whose paths all exist in its first block. The chosen
    paths are checked on every block, so a renamed library module fails here, not in training.
    """
    blocks = backbone.blocks
    family = getattr(backbone, "family", None)
    if family is None:
        family = next((name for name, paths in layouts.items() if _has_paths(blocks[0], paths.values())), None)
        if family is None:
            raise ValueError(
                f"{type(backbone).__name__}: its blocks ({type(blocks[0]).__name__}) match none of the known layouts "
                f"{dict(layouts)}"
            )
    elif family not in layouts:
        raise ValueError(f"{type(backbone).__name__}: family {family!r} is not supported; known: {', '.join(layouts)}")
    paths = layouts[family]
    for index, block in enumerate(blocks):
        missing = [p for p in dict.fromkeys(paths.values()) if not _has_paths(block, [p])]
        if missing:
            raise ValueError(
                f"{type(backbone).__name__} ({family}): block {index} ({type(block).__name__}) has no module(s) "
                f"{missing}; the library's module names may have changed"
            )
    return family, paths


def _has_paths(module: nn.Module, paths: Sequence[str] | object) -> bool:
    for path in paths:  # type: ignore[union-attr]
        try:
            module.get_submodule(path)
        except AttributeError:
            return False
    return True


def _module_path(root: nn.Module, target: nn.Module) -> str:
    """Dotted name of ``target`` inside ``root``."""
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


class LoRA(Adapter):
    """LoRA on the frozen backbone's attention projections, injected with ``peft``.

    Args:
        embed_dim: backbone width D (checked against the backbone in :meth:`attach`).
        num_layers: number of blocks L (all are adapted).
        num_prefix_tokens: cls/register tokens; unused (the adapter's forward is the identity).
        rank: LoRA rank r.
        alpha: LoRA α; the update is scaled by α/r (default α = r, i.e. scale 1).
        targets: projections to adapt, from ``"q"``, ``"k"``, ``"v"``, ``"o"`` (default q and v, as
            in the LoRA paper). On fused-qkv backbones (SAM, DOFA) q/k/v select the whole ``qkv``.
        dropout: dropout on the LoRA input; active only while the adapter is in training mode (the
            frozen backbone itself always stays in eval mode).
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_prefix_tokens: int = 1,
        rank: int = 8,
        alpha: float | None = None,
        targets: Sequence[str] = ("q", "v"),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or num_layers < 1 or num_prefix_tokens < 0:
            raise ValueError(
                f"need embed_dim >= 1, num_layers >= 1, num_prefix_tokens >= 0; "
                f"got {embed_dim}, {num_layers}, {num_prefix_tokens}"
            )
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if isinstance(targets, str):
            targets = (targets,)
        targets = tuple(targets)
        unknown = [t for t in targets if t not in _TARGETS]
        if not targets or unknown or len(set(targets)) != len(targets):
            raise ValueError(f"LoRA targets must be distinct names from {_TARGETS}, got {targets}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_layers, self.num_prefix_tokens = embed_dim, num_layers, num_prefix_tokens
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.targets = tuple(t for t in _TARGETS if t in targets)
        self.dropout = float(dropout)
        # peft's LoRA layers inside the backbone and their dropout modules (when dropout > 0); plain
        # lists, so that the backbone's modules are not registered a second time under the adapter.
        self._lora_layers: list[nn.Module] = []
        self._dropouts: list[nn.Module] = []

    @property
    def attached(self) -> bool:
        return bool(self._lora_layers)

    def attach(self, backbone: nn.Module) -> None:
        """Inject LoRA into every block's target projections (once); only LoRA weights train."""
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self.attached:
            raise RuntimeError("this LoRA adapter is already attached to a backbone; build a new one")
        check_backbone_sizes(self, backbone)
        if any(isinstance(m, BaseTunerLayer) for m in backbone.modules()):
            raise RuntimeError(f"{type(backbone).__name__} already holds peft adapter layers (LoRA attached twice?)")
        family, paths = block_layout(backbone, ATTENTION_PROJECTIONS)
        projections = sorted({paths[t] for t in self.targets})
        fused = [t for t in self.targets if t != "o"] if paths["q"] == paths["k"] == paths["v"] else []
        if fused:
            logger.warning(
                "LoRA on %s: attention uses a fused %r projection; targets %s become one rank-%d update of the whole "
                "qkv (q, k and v share it)",
                family, paths["q"], list(fused), self.rank,
            )  # fmt: skip
        blocks_path = _module_path(backbone.model, backbone.blocks)
        pattern = rf"{re.escape(blocks_path)}\.\d+\.(?:{'|'.join(re.escape(p) for p in projections)})"
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=pattern,  # a string is matched with re.fullmatch against module names
            bias="none",
            init_lora_weights=True,  # A: Kaiming-uniform, B: zeros
        )
        inject_adapter_in_model(config, backbone.model, adapter_name=PEFT_ADAPTER_NAME)
        layers = [m for m in backbone.model.modules() if isinstance(m, LoraLayer)]
        expected = self.num_layers * len(projections)
        if len(layers) != expected:
            raise RuntimeError(f"LoRA wrapped {len(layers)} projections, expected {expected} ({pattern!r})")
        # peft freezes everything else already; make the invariant explicit, whatever peft's version.
        for name, param in backbone.named_parameters():
            param.requires_grad_("lora_" in name)
        # New modules are created in training mode; the frozen backbone must stay in eval.
        backbone.train(False)
        self._lora_layers = layers
        if self.dropout > 0:  # otherwise peft's dropout is an Identity: leave it in eval with the rest
            self._dropouts = [layer.lora_dropout for layer in layers]
            self.train(self.training)

    def train(self, mode: bool = True) -> "LoRA":
        """Set the adapter's mode; LoRA's own dropout inside the (eval) backbone follows it."""
        super().train(mode)
        for dropout in self._dropouts:
            dropout.train(mode)
        return self

    def lora_parameters(self) -> list[nn.Parameter]:
        """The injected LoRA weights (empty before :meth:`attach`)."""
        return [p for layer in self._lora_layers for n, p in layer.named_parameters() if "lora_" in n]

    def num_trainable_parameters(self) -> int:
        """The LoRA weights injected into the backbone (the adapter module itself has none)."""
        own = super().num_trainable_parameters()
        return own + sum(p.numel() for p in self.lora_parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return (
            f"dim={self.embed_dim}, layers={self.num_layers}, rank={self.rank}, alpha={self.alpha:g}, "
            f"targets={self.targets}, dropout={self.dropout:g}, attached={self.attached}"
        )


def check_backbone_sizes(adapter: nn.Module, backbone: nn.Module) -> None:
    """Fail early when an adapter built for another width, depth or prefix is attached (PEFT baselines)."""
    got = (int(backbone.embed_dim), int(backbone.num_layers), int(backbone.num_prefix_tokens))
    want = (int(adapter.embed_dim), int(adapter.num_layers), int(adapter.num_prefix_tokens))
    if got != want:
        raise ValueError(
            f"{type(adapter).__name__} was built for embed_dim, num_layers, num_prefix_tokens = {want} but "
            f"{type(backbone).__name__} has {got}"
        )

