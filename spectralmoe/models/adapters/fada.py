"""FADA — "Learning Frequency-Adapted VFM for DGSS" (Bi et al., NeurIPS 2024). No public code.

Our reading of the paper's description (BASELINES.md "FADA", UNVERIFIED in detail): the frozen
patch features of every block are split by a one-level orthonormal Haar wavelet transform over the
patch grid into a low-frequency band (LL: scene content) and three high-frequency bands
(LH, HL, HH: edges/texture, where style lives)::

    LL, H = DWT(f)                              H = (LH, HL, HH)
    δ_L = mlp_delta_f (Δ_L + LL)                Rein attention of LL on low-rank tokens S^L_l
    Ĥ   = IN(H)                                  instance norm per image, band and channel over
                                                 the band's positions: removes style statistics
    δ_H = mlp_delta_f_high(Δ_H + Ĥ)             Rein attention of Ĥ on low-rank tokens S^H_l
    f'  = f + scale · IDWT(δ_L, δ_H)

Odd grids are padded by repeating the last row/column (the padded pair then has zero detail
coefficients, unlike zero padding which would plant a fake edge in H) and the result is cropped.

Sizes. Each frequency branch is one Rein branch — low-rank tokens (r = 16, T = 100) and its own
``mlp_token2feat``/``mlp_delta_f`` pair — as the paper describes low-rank frequency tokens for both
branches; the three detail bands share the high-frequency branch (they are the same kind of signal
at three orientations and the band statistics are already removed by IN), so the module is two
Rein branches + one scale + one query link (queries from the low-frequency tokens). At ViT-L:
2·431,616 + 4·1,049,600 + 1 + 459,264 = **5,520,897** (5.52 M). The paper reports 11.65 M, whose
breakdown cannot be derived without code; we do not pad the model to match.
"""

from __future__ import annotations

import torch
from torch import nn

from spectralmoe.models.adapters.rein import GridMixin, LayerTokens, Rein, rein_delta

#: Our trainable parameters of ``FADA(1024, 24)`` (the paper says 11.65 M; see the module docstring).
FADA_PARAMS_VIT_L = 5_520_897
#: The paper's figure, kept for reports.
FADA_PAPER_PARAMS = 11_650_000

_IN_EPS = 1e-5


def haar_dwt2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-level orthonormal 2-D Haar transform of ``x`` ``[B, H, W, D]`` (H, W even).

    Returns LL ``[B, H/2, W/2, D]`` and the detail bands stacked as ``[B, 3, H/2, W/2, D]`` in the
    order LH (differences across columns), HL (across rows), HH (diagonal).
    """
    b, h, w, d = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"haar_dwt2 needs an even grid, got {h}x{w} (pad first)")
    blocks = x.reshape(b, h // 2, 2, w // 2, 2, d)
    p, q = blocks[:, :, 0, :, 0], blocks[:, :, 0, :, 1]  # top-left, top-right of each 2×2 block
    r, s = blocks[:, :, 1, :, 0], blocks[:, :, 1, :, 1]  # bottom-left, bottom-right
    ll = (p + q + r + s) / 2
    lh = (p - q + r - s) / 2
    hl = (p + q - r - s) / 2
    hh = (p - q - r + s) / 2
    return ll, torch.stack([lh, hl, hh], dim=1)


def haar_idwt2(ll: torch.Tensor, highs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt2`: LL ``[B, h, w, D]`` + details ``[B, 3, h, w, D]`` → ``[B, 2h, 2w, D]``."""
    lh, hl, hh = highs.unbind(dim=1)
    p = (ll + lh + hl + hh) / 2
    q = (ll - lh + hl - hh) / 2
    r = (ll + lh - hl - hh) / 2
    s = (ll - lh - hl + hh) / 2
    b, h, w, d = ll.shape
    top = torch.stack([p, q], dim=3)  # [B, h, w, 2, D]: columns interleaved
    bottom = torch.stack([r, s], dim=3)
    return torch.stack([top, bottom], dim=2).reshape(b, 2 * h, 2 * w, d)


def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Repeat the last row / column of ``[B, H, W, D]`` so that H and W are even."""
    if x.shape[1] % 2:
        x = torch.cat([x, x[:, -1:]], dim=1)
    if x.shape[2] % 2:
        x = torch.cat([x, x[:, :, -1:]], dim=2)
    return x


def band_instance_norm(highs: torch.Tensor, eps: float = _IN_EPS) -> torch.Tensor:
    """Instance norm of detail bands ``[B, 3, h, w, D]`` over each band's positions (no affine)."""
    mean = highs.mean(dim=(2, 3), keepdim=True)
    var = highs.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (highs - mean) * torch.rsqrt(var + eps)


class FADA(GridMixin, Rein):
    """Haar-wavelet frequency-adapted tokens after every frozen block (see the module docstring).

    Args: as :class:`Rein` (``rank``/``low_rank`` shape both branches' tokens; Rein's ``tokens``,
    ``mlp_token2feat``, ``mlp_delta_f`` are the low-frequency branch), plus
        grid: default patch grid ``(h, w)``; also settable per call (``forward(..., grid=)``) or with
            :meth:`set_grid`; else a square grid is inferred.
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
        grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(embed_dim, num_layers, rank, token_length, query_dim, num_prefix_tokens, scale_init, low_rank)
        self.high_tokens = LayerTokens(num_layers, token_length, embed_dim, rank if low_rank else None)
        self.mlp_token2feat_high = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f_high = nn.Linear(embed_dim, embed_dim)
        self.set_grid(grid)

    def forward(
        self,
        tokens: torch.Tensor,
        layer: int,
        depth_tokens: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine block ``layer``'s patch tokens band by band; auxiliary loss 0."""
        prefix, patches = self._split(tokens, layer)
        return self._residual(prefix, patches, self.wavelet_delta(patches, layer, grid)), tokens.new_zeros(())

    def delta(self, patches: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.wavelet_delta(patches, layer)

    def wavelet_delta(self, patches: torch.Tensor, layer: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Un-scaled update ``IDWT(δ_L, δ_H)`` for patch tokens ``[B, N, D]``."""
        b, n, d = patches.shape
        h, w = self.resolve_grid(n, grid)
        ll, highs = haar_dwt2(pad_to_even(patches.reshape(b, h, w, d)))
        delta_low = rein_delta(ll, self.tokens(layer), self.mlp_token2feat, self.mlp_delta_f)
        delta_high = rein_delta(
            band_instance_norm(highs), self.high_tokens(layer), self.mlp_token2feat_high, self.mlp_delta_f_high
        )
        return haar_idwt2(delta_low, delta_high)[:, :h, :w].reshape(b, n, d)

    def load_official_state_dict(self, state_dict: object) -> None:  # type: ignore[override]
        """FADA has no public code, hence no official checkpoints to load."""
        raise NotImplementedError("FADA has no released code or checkpoints (BiQiWHU/FADA holds only a README)")
