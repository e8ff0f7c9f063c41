"""Rein (CVPR 2024, "Stronger, Fewer, & Superior"): learnable tokens refine every block's output.

Per layer ``l`` a token matrix ``S_l ∈ R^{T×D}`` (low-rank ``A_l B_l`` by default) attends to the
patch features ``f`` and produces a residual update (BASELINES.md, "REIN")::

    a  = softmax_t(f S_lᵀ / √D)                      (over all T tokens)
    Δ  = a[:, 1:] · mlp_token2feat(S_l[1:])          (token 0 is a sink)
    f' = f + scale · mlp_delta_f(Δ + f)

``mlp_token2feat``, ``mlp_delta_f`` and the scalar ``scale`` are shared by all layers; prefix tokens
(cls, registers) pass through untouched; the token matrices of all layers also give the Mask2Former
query embeddings through :class:`~spectralmoe.models.adapters.common.QueryLink`.

This module also holds the pieces the other token baselines (DepthForge, SET, FADA) build on:
:class:`LayerTokens`, :func:`rein_delta` and :class:`GridMixin`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from spectralmoe.models.adapters.base import Adapter
from spectralmoe.models.adapters.common import QueryLink, join_prefix, split_prefix, token_attention

#: Trainable parameters of ``Rein(1024, 24)`` (ViT-L, r = 16, T = 100, Q = 256) — the paper's 2.99 M.
REIN_PARAMS_VIT_L = 2_990_081

#: Rein's token init bound uses ``3·p²`` with the patch size p = 16 of all its configs; we keep that
#: constant so the initialisation does not depend on which backbone the tokens are attached to.
_INIT_PATCH_SIZE = 16


def token_init_bound(embed_dim: int, rank: int | None, patch_size: int = _INIT_PATCH_SIZE) -> float:
    """Bound ``v`` of Rein's uniform(−v, v) token init (VPT's Xavier-style rule).

    Full tokens: ``sqrt(6 / (3p² + D))``; low-rank factors: ``sqrt(6 / (3p² + sqrt(D·r)))``.
    """
    fan = float(embed_dim) if rank is None else math.sqrt(embed_dim * rank)
    return math.sqrt(6.0 / (3 * patch_size * patch_size + fan))


class LayerTokens(nn.Module):
    """Per-layer learnable token matrices ``S_l ∈ R^{T×D}``.

    ``rank=None`` stores them in full (``full``: ``[L, T, D]``); otherwise as ``A_l B_l`` with
    ``a``: ``[L, T, r]`` and ``b``: ``[L, r, D]`` (Rein's default "LoRA tokens": far fewer
    parameters at the same accuracy). Both are initialised uniform(−v, v), see
    :func:`token_init_bound`.
    """

    def __init__(self, num_layers: int, token_length: int, embed_dim: int, rank: int | None) -> None:
        super().__init__()
        if num_layers < 1 or token_length < 2 or embed_dim < 1:
            raise ValueError(
                f"need num_layers >= 1, token_length >= 2 (token 0 is a sink), embed_dim >= 1; "
                f"got {num_layers}, {token_length}, {embed_dim}"
            )
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1 (or None for full tokens), got {rank}")
        self.num_layers, self.token_length, self.embed_dim, self.rank = num_layers, token_length, embed_dim, rank
        bound = token_init_bound(embed_dim, rank)
        if rank is None:
            self.full = nn.Parameter(torch.empty(num_layers, token_length, embed_dim))
            nn.init.uniform_(self.full, -bound, bound)
        else:
            self.a = nn.Parameter(torch.empty(num_layers, token_length, rank))
            self.b = nn.Parameter(torch.empty(num_layers, rank, embed_dim))
            nn.init.uniform_(self.a, -bound, bound)
            nn.init.uniform_(self.b, -bound, bound)

    def forward(self, layer: int | None = None) -> torch.Tensor:
        """Tokens of ``layer`` ``[T, D]``, or of all layers ``[L, T, D]`` when ``layer`` is None."""
        if self.rank is None:
            return self.full if layer is None else self.full[layer]
        if layer is None:
            return self.a @ self.b
        return self.a[layer] @ self.b[layer]

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, tokens={self.token_length}, dim={self.embed_dim}, rank={self.rank}"


def rein_delta(
    features: torch.Tensor, tokens: torch.Tensor, token2feat: nn.Module, delta_f: nn.Module
) -> torch.Tensor:
    """Rein's un-scaled update ``mlp_delta_f(Δ + f)`` for features ``[..., n, D]`` and tokens ``[T, D]``."""
    return delta_f(token_attention(features, tokens, token2feat) + features)


class GridMixin:
    """Spatial token grid for adapters that transform over it (SET's FFT, FADA's Haar DWT).

    The Adapter contract passes only tokens, so the grid comes from, in this order: the ``grid``
    argument of ``forward``; the grid given to :meth:`set_grid` (the segmentor knows it from
    ``backbone.embed``); otherwise a square grid ``h = w = √N`` (non-square → a clear error).
    """

    _grid: tuple[int, int] | None = None

    def set_grid(self, grid: tuple[int, int] | None) -> None:
        """Default patch grid ``(h, w)`` for following calls; None → infer a square grid."""
        if grid is not None:
            h, w = (int(v) for v in grid)
            if h < 1 or w < 1:
                raise ValueError(f"grid must be positive, got {grid}")
            grid = (h, w)
        self._grid = grid

    def resolve_grid(self, num_patches: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
        """The ``(h, w)`` grid of ``num_patches`` patch tokens (see the class docstring)."""
        chosen = grid if grid is not None else self._grid
        if chosen is None:
            side = math.isqrt(num_patches)
            if side * side != num_patches:
                raise ValueError(
                    f"{type(self).__name__}: {num_patches} patch tokens is not a square grid; "
                    "pass grid=(h, w) to forward or call set_grid((h, w))"
                )
            return side, side
        h, w = (int(v) for v in chosen)
        if h * w != num_patches:
            raise ValueError(f"{type(self).__name__}: grid {h}x{w} = {h * w} does not match {num_patches} patch tokens")
        return h, w


class Rein(Adapter):
    """Rein token adapter after every frozen block (BASELINES.md "REIN").

    Args:
        embed_dim: backbone width D.
        num_layers: number of adapted blocks L (one token matrix each).
        rank: rank r of the low-rank tokens ``S_l = A_l B_l`` (ignored when ``low_rank=False``).
        token_length: tokens per layer T; also the number of Mask2Former queries.
        query_dim: width Q of the query embeddings returned by :meth:`queries`.
        num_prefix_tokens: cls/register tokens in front of the patches; they pass through untouched.
        scale_init: initial value of the shared residual scale (small, so training starts near the
            frozen model).
        low_rank: False → Rein's full-token variant (``S_l`` stored as ``[T, D]``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        rank: int = 16,
        token_length: int = 100,
        query_dim: int = 256,
        num_prefix_tokens: int = 1,
        scale_init: float = 1e-3,
        low_rank: bool = True,
    ) -> None:
        super().__init__()
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.embed_dim, self.num_layers, self.token_length = embed_dim, num_layers, token_length
        self.num_prefix_tokens = num_prefix_tokens
        self.tokens = LayerTokens(num_layers, token_length, embed_dim, rank if low_rank else None)
        # nn.Linear's default init is Rein's kaiming_uniform(a=√5).
        self.mlp_token2feat = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f = nn.Linear(embed_dim, embed_dim)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.query_link = QueryLink(embed_dim, query_dim)

    # ------------------------------------------------------------------ forward
    def forward(
        self, tokens: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine the patch tokens of block ``layer``; the auxiliary loss is always 0."""
        prefix, patches = self._split(tokens, layer)
        return self._residual(prefix, patches, self.delta(patches, layer, depth_tokens)), tokens.new_zeros(())

    def delta(self, patches: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Un-scaled update ``mlp_delta_f(Δ + f)`` for patch tokens ``[B, N, D]``."""
        return rein_delta(patches, self.tokens(layer), self.mlp_token2feat, self.mlp_delta_f)

    def queries(self) -> torch.Tensor:
        """Mask2Former query embeddings ``[T, Q]`` from the token matrices of all layers."""
        return self.query_link(self.tokens())

    def _split(self, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"{type(self).__name__} has {self.num_layers} layers, got layer={layer}")
        if tokens.ndim == 3 and tokens.shape[-1] != self.embed_dim:
            raise ValueError(
                f"{type(self).__name__} expects width {self.embed_dim}, got tokens of shape {tuple(tokens.shape)}"
            )
        return split_prefix(tokens, self.num_prefix_tokens)

    def _residual(self, prefix: torch.Tensor, patches: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``f + scale·δ`` in the input dtype, prefix re-attached unchanged."""
        return join_prefix(prefix, (patches + self.scale * delta).to(patches.dtype))

    # ------------------------------------------------------- official weights
    def _official_key_map(self) -> dict[str, str]:
        """Official (``w1oves/Rein`` ``Reins``/``LoRAReins``) parameter names → ours."""
        if self.tokens.rank is None:
            keys = {"learnable_tokens": "tokens.full"}
        else:
            keys = {"learnable_tokens_a": "tokens.a", "learnable_tokens_b": "tokens.b"}
        keys["scale"] = "scale"
        for linear in ("mlp_token2feat", "mlp_delta_f"):
            keys.update({f"{linear}.{p}": f"{linear}.{p}" for p in ("weight", "bias")})
        for linear in ("transform", "merge"):
            keys.update({f"{linear}.{p}": f"query_link.{linear}.{p}" for p in ("weight", "bias")})
        return keys

    def _non_official_parameters(self) -> tuple[str, ...]:
        """Prefixes of our parameters that official checkpoints cannot contain."""
        return ()

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load adapter weights saved by the official code (a full mmseg checkpoint is fine).

        The adapter's keys are found by their common prefix (e.g. ``backbone.reins.``), located
        from the ``mlp_token2feat.weight`` key; keys outside that prefix (backbone, head) are
        ignored, unknown or missing adapter keys raise ``KeyError``.
        """
        if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
            state_dict = state_dict["state_dict"]
        anchor = "mlp_token2feat.weight"
        prefixes = {k[: -len(anchor)] for k in state_dict if k == anchor or k.endswith("." + anchor)}
        if len(prefixes) != 1:
            raise KeyError(f"expected one '{anchor}' key in the official state dict, found prefixes {sorted(prefixes)}")
        prefix = prefixes.pop()
        key_map = self._official_key_map()
        mapped: dict[str, torch.Tensor] = {}
        unknown = []
        for key, value in state_dict.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name in key_map:
                mapped[key_map[name]] = value
            else:
                unknown.append(key)
        if unknown:
            variant = f"{type(self).__name__}(low_rank={self.tokens.rank is not None})"
            raise KeyError(f"official keys {unknown} have no counterpart in {variant}")
        skip = self._non_official_parameters()
        missing = [k for k, _ in self.named_parameters() if k not in mapped and not k.startswith(skip)]
        if missing:
            raise KeyError(f"official state dict (prefix {prefix!r}) lacks {missing}")
        self.load_state_dict(mapped, strict=False)
