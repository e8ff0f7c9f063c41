"""Pieces shared by the backbones written here (DOFA, EVA-02, Copernicus-FM, SoftCon): one copy each.

* **Position tables.** MAE's fixed 1-D / 2-D sin-cos tables and the bicubic resampling of a learned
  or fixed square table to the actual patch grid.
* **Fourier expansion** (Aurora's, used by Copernicus-FM for wavelength, bandwidth and metadata):
  ``sin(2πx/λ_j), cos(2πx/λ_j)`` over wavelengths λ_j log-spaced between a lower and an upper bound.
* **Wavelength hypernetwork** (DOFA's, reused by Copernicus-FM): per-band descriptor tokens pass a
  residual MLP (``fclayer``) and a one-layer transformer over ``[weight tokens; band tokens; bias
  token]`` (``weight_generator``); each band's output token becomes its k×k×D kernel, the bias token
  the D conv biases, both scaled by 0.01. Only how the band tokens are made differs per family.
* **Pre-norm ViT block** in timm's ``Block`` layout (fused ``qkv``, GELU MLP, no LayerScale), shared by
  DOFA and Copernicus-FM.
* **Weights IO**: reading foreign ``.pth`` files with ``weights_only=True``, strict loading with the
  missing/unexpected keys in the error, hub downloads with an offline hint, and our folder format
  (``config.json`` + ``model.safetensors``) written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "FamilyConfig",
    "resolve_preset",
    "random_weights_requested",
    "read_family_folder",
    "sincos_embedding_1d",
    "sincos_embedding_2d",
    "resample_pos_embed",
    "fourier_expansion",
    "ResidualWaveMLP",
    "WavelengthWeightGenerator",
    "HypernetworkPatchEmbedding",
    "PreNormAttention",
    "PreNormMLP",
    "PreNormBlock",
    "check_out_indices",
    "load_tensors_only",
    "read_state_file",
    "drop_keys",
    "strict_load",
    "locate_weights",
    "hub_download",
    "save_folder",
    "read_folder",
]


class FamilyConfig:
    """Base of the written families' size dataclasses: ``to_dict`` / ``from_dict`` of their
    ``config.json``, refusing unknown keys so that a typo in a config file does not pass silently."""

    #: the family's name in error messages
    family_label: ClassVar[str] = "backbone"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """Build from a dict (config.json); ``model_type`` (our folder format's tag) is ignored."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known - {"model_type"})
        if unknown:
            raise ValueError(f"unknown {cls.family_label} config keys {unknown}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------------------------------
# Position tables
# --------------------------------------------------------------------------------------------------


def sincos_embedding_1d(dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """``[M]`` positions → ``[M, dim]``: sines then cosines at frequencies temperature^(-i/(dim/2)) (MAE rule).

    Galileo's tables use temperature 10: its code divides the exponent by 2·dim instead of dim/2, and
    10000^(-i/(2·dim)) = 10^(-i/(dim/2)).
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32, device=positions.device) / (dim / 2.0)
    omega = 1.0 / (temperature**omega)
    angles = positions.reshape(-1).float()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_embedding_2d(dim: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """The fixed ``[1, 1 + grid², dim]`` table of DOFA/MAE: zero cls row, then the grid row-major.

    As in MAE, the first half of the channels encodes the column index, the second half the row index.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float32, device=device)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    table = torch.cat([sincos_embedding_1d(dim // 2, cols), sincos_embedding_1d(dim // 2, rows)], dim=1)
    return torch.cat([table.new_zeros(1, dim), table], dim=0)[None]


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1, antialias: bool = False
) -> torch.Tensor:
    """Bicubically resample the patch part of a square ``[1, P + g², D]`` table to ``grid`` (h, w).

    ``antialias=True`` is torch's antialiased bicubic (cubic coefficient −0.5, as PIL), which differs
    from the plain one (−0.75) even when upsampling: Copernicus-FM resizes with it, DOFA and EVA-02 without.
    """
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"position table with {patches.shape[1]} patch entries is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    table = patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False, antialias=antialias)
    table = table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)


# --------------------------------------------------------------------------------------------------
# Fourier expansion (Aurora / Copernicus-FM)
# --------------------------------------------------------------------------------------------------


def fourier_expansion(
    values: torch.Tensor, lower: float, upper: float, dim: int, *, what: str = "value", check_range: bool = True
) -> torch.Tensor:
    """``[...]`` → ``[..., dim]``: sines then cosines of ``2π·x/λ_j``, λ_j log-spaced in [lower, upper].

    Computed in float64 and returned as float32, as the original. With ``check_range`` every |x| must
    lie in [lower, upper] or be exactly 0 (the original's assertion; outside it the code is ambiguous);
    the error names ``what`` and the offending values.
    """
    if dim % 2:
        raise ValueError(f"Fourier expansion needs an even dimension, got {dim}")
    x = values.double()
    if check_range:
        magnitude = x.abs()
        bad = ~(((magnitude >= lower) & (magnitude <= upper)) | (x == 0))
        if bool(bad.any()):
            raise ValueError(
                f"{what} {x[bad].tolist()[:8]} outside the encoded range [{lower:g}, {upper:g}] of the pretrained "
                "model (or exactly 0)"
            )
    wavelengths = torch.logspace(math.log10(lower), math.log10(upper), dim // 2, base=10.0,
                                 dtype=torch.float64, device=x.device)  # fmt: skip
    angles = x[..., None] * (2.0 * np.pi / wavelengths)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).float()


# --------------------------------------------------------------------------------------------------
# Wavelength hypernetwork (DOFA, Copernicus-FM)
# --------------------------------------------------------------------------------------------------


class ResidualWaveMLP(nn.Module):
    """``x + relu(w2(relu(w1(x))))`` on the band descriptors (official name: ``fclayer``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.w2(F.relu(self.w1(x))))


class WavelengthWeightGenerator(nn.Module):
    """One transformer layer over [weight tokens; band tokens; bias token] → per-band kernels and a bias.

    The layer is torch's ``nn.TransformerEncoderLayer`` (post-norm, GELU, no dropout), unbatched, as in
    the originals. Returns the raw (unscaled) ``[C, kernel_numel]`` band kernels and the ``[embed_dim]`` bias.
    """

    def __init__(
        self,
        dim: int,
        kernel_numel: int,
        embed_dim: int,
        *,
        num_weight_tokens: int = 128,
        heads: int = 4,
        ffn_dim: int = 2048,
        layers: int = 1,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=ffn_dim, dropout=0.0, activation="gelu",
            layer_norm_eps=norm_eps, batch_first=False, norm_first=False,
        )  # fmt: skip
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(dim, kernel_numel)
        self.fc_bias = nn.Linear(dim, embed_dim)
        self.weight_tokens = nn.Parameter(torch.empty(num_weight_tokens, dim))
        self.bias_token = nn.Parameter(torch.empty(1, dim))

    def forward(self, band_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_weight = self.weight_tokens.shape[0]
        sequence = torch.cat([self.weight_tokens, band_tokens.to(self.weight_tokens.dtype), self.bias_token], dim=0)
        encoded = self.transformer_encoder(sequence)  # [T, dim], unbatched as in the original
        kernels = self.fc_weight(encoded[num_weight:-1] + band_tokens)
        bias = self.fc_bias(encoded[-1])
        return kernels, bias


class HypernetworkPatchEmbedding(nn.Module):
    """A k×k stride-k convolution whose kernel is generated from per-band descriptor tokens.

    Subclasses turn their band description (DOFA: wavelength; Copernicus-FM: wavelength and
    bandwidth) into ``[C, wave_dim]`` tokens; everything after that is here. Children keep the
    official names (``fclayer``, ``weight_generator``) so that the released checkpoints load.

    ``legacy_kernel_layout`` reproduces DOFA's March-2024 raw reshape of the generated kernels
    (bands mixed); the default reads them as ``[C, k, k, D]`` (each band its own kernel).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        patch_size: int,
        wave_dim: int,
        num_weight_tokens: int,
        generator_heads: int,
        generator_ffn_dim: int,
        generator_layers: int,
        generator_norm_eps: float,
        kernel_scale: float,
        patch_padding: int,
        legacy_kernel_layout: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.patch_size, self.wave_dim = embed_dim, patch_size, wave_dim
        self.kernel_scale, self.patch_padding = kernel_scale, patch_padding
        self.legacy_kernel_layout = legacy_kernel_layout
        self.fclayer = ResidualWaveMLP(wave_dim)
        self.weight_generator = WavelengthWeightGenerator(
            wave_dim, patch_size * patch_size * embed_dim, embed_dim, num_weight_tokens=num_weight_tokens,
            heads=generator_heads, ffn_dim=generator_ffn_dim, layers=generator_layers, norm_eps=generator_norm_eps,
        )  # fmt: skip

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The originals' init: xavier-uniform weights and 0.01 biases, N(0, 0.02) weight/bias tokens."""
        for module in (self.fclayer, self.weight_generator):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.xavier_uniform_(sub.weight)
                    nn.init.constant_(sub.bias, 0.01)
        nn.init.normal_(self.weight_generator.weight_tokens, std=0.02)
        nn.init.normal_(self.weight_generator.bias_token, std=0.02)

    def kernel_from_tokens(self, band_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[C, wave_dim]`` descriptors → conv kernel ``[D, C, k, k]`` and bias ``[D]`` (both scaled)."""
        k, dim, bands = self.patch_size, self.embed_dim, band_tokens.shape[0]
        kernels, bias = self.weight_generator(self.fclayer(band_tokens))
        if self.legacy_kernel_layout:  # March-2024 DOFA weights: raw reshape, mixes bands
            weight = kernels.reshape(dim, bands, k, k)
        else:
            weight = kernels.reshape(bands, k, k, dim).permute(3, 0, 1, 2)
        return weight * self.kernel_scale, bias * self.kernel_scale

    def convolve(
        self, image: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` → patch tokens ``[B, h·w, D]`` and the grid ``(h, w)``."""
        if not torch.is_autocast_enabled(image.device.type):
            weight, bias = weight.to(image.dtype), bias.to(image.dtype)
        out = F.conv2d(image, weight, bias, stride=self.patch_size, padding=self.patch_padding)
        return out.flatten(2).transpose(1, 2), (out.shape[-2], out.shape[-1])


# --------------------------------------------------------------------------------------------------
# Pre-norm ViT block (timm ``Block`` layout)
# --------------------------------------------------------------------------------------------------


class PreNormAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, via scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class PreNormMLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact (erf) GELU, as timm's ``Mlp``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PreNormBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; any token count (prompts are just tokens)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = PreNormAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = PreNormMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def check_out_indices(out_indices: Sequence[int] | None, depth: int, family: str, default: Sequence[int]
                      ) -> tuple[int, ...]:  # fmt: skip
    """The blocks tapped for the decoder (``default`` when None), each in ``0 .. depth-1``."""
    indices = tuple(int(i) for i in (default if out_indices is None else out_indices))
    bad = [i for i in indices if not 0 <= i < depth]
    if bad or not indices:
        raise ValueError(f"out_indices {list(indices)} must lie in 0..{depth - 1} for a {depth}-block {family}")
    return indices


# --------------------------------------------------------------------------------------------------
# Weights IO
# --------------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module", "teacher", "student")
_WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.")


def load_tensors_only(path: str | os.PathLike, hint: str = "re-save only its model state dict") -> Any:
    """``torch.load`` of an untrusted file with ``weights_only=True`` (tensors, numbers, containers; no
    code runs); anything else is refused with ``hint`` on what to re-save."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: holds objects other than tensors; {hint}") from err


def read_state_file(path: str | os.PathLike, *, strip_prefixes: Sequence[str] = _WRAPPER_PREFIXES
                    ) -> dict[str, torch.Tensor]:  # fmt: skip
    """A foreign ``.pth``/``.pt`` → a flat state dict of float tensors (untrusted file: tensors only).

    Unwraps ``model`` / ``state_dict`` / ``model_state_dict`` / ``module`` containers and strips the
    ``module.`` / ``backbone.`` / ``encoder.`` prefixes of DDP and wrapper modules.
    """
    if str(path).endswith(".safetensors"):  # e.g. timm's hub files: the same keys, a safe container
        from safetensors.torch import load_file

        raw = {k: v.clone() for k, v in load_file(str(path), device="cpu").items()}
    else:
        raw = load_tensors_only(path, "a training checkpoint with optimizer/args? Re-save only its model state dict")
    state = raw
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'model'/'state_dict')")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in strip_prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value.float() if value.is_floating_point() else value
    return cleaned


def drop_keys(state: dict[str, torch.Tensor], pattern: re.Pattern[str]) -> dict[str, torch.Tensor]:
    """The state without the keys that ``pattern`` matches (heads, pretraining-only parts)."""
    return {k: v for k, v in state.items() if not pattern.match(k)}


ConfigT = TypeVar("ConfigT", bound=FamilyConfig)


def resolve_preset(name: str | ConfigT, presets: Mapping[str, ConfigT], config_type: type[ConfigT]
                   ) -> tuple[str | None, ConfigT]:  # fmt: skip
    """``(preset name, its config)`` for a preset name, ``(None, config)`` for a config given as is."""
    if isinstance(name, config_type):
        return None, name
    try:
        return name, presets[name]  # type: ignore[index]
    except KeyError:
        raise KeyError(f"unknown {config_type.family_label} preset {name!r}; known: {', '.join(sorted(presets))}"
                       ) from None  # fmt: skip


def random_weights_requested(pretrained: bool, weights: Any, family: str, preset: str | None) -> bool:
    """True when a builder is asked for random weights (logged as a warning); ``weights`` together with
    ``pretrained=False`` is a contradiction and an error."""
    if pretrained:
        return False
    if weights is not None:
        raise ValueError("weights= was given with pretrained=False; drop one of them")
    logger.warning("%s %s built with RANDOM weights (pretrained=False)", family, preset or "config")
    return True


def strict_load(model: nn.Module, state: dict[str, torch.Tensor], source: str, family: str) -> None:
    """Load every tensor of ``model`` from ``state`` and nothing else; errors list the keys and name the file."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the {family} architecture: missing keys {missing[:20]}"
            f"{' …' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
            f"{' …' if len(unexpected) > 20 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: tensor shapes do not match the {family} config: {err}") from err


def hub_download(repo_id: str, filename: str) -> str:
    """Download one file of a Hugging Face hub repo (cached), with an offline hint in the error."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as err:  # offline, missing file, auth: all end the same way for the user
        raise RuntimeError(
            f"could not download {filename!r} from the Hugging Face hub repo {repo_id!r} ({type(err).__name__}: "
            f"{err}). Without internet, download it elsewhere and pass weights=<local .pth file or folder>"
        ) from err


def save_folder(folder: str | os.PathLike, state: dict[str, torch.Tensor], config: dict[str, Any], model_type: str
                ) -> Path:  # fmt: skip
    """Write ``model.safetensors`` and ``config.json`` (with ``model_type``), each whole (temporary + rename)."""
    from safetensors.torch import save_file

    from spectralmoe.files import atomic_path, atomic_write_bytes

    folder = Path(folder)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "model_type": model_type})
    text = json.dumps({"model_type": model_type, **config}, indent=2) + "\n"
    atomic_write_bytes(folder / "config.json", text.encode())
    return folder


def read_folder(folder: Path, model_type: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our folder format → (config values without ``model_type``, state dict)."""
    from safetensors.torch import load_file

    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{folder}: missing {needed.name} (expected save_pretrained output)")
    try:
        values = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{config_file}: expected a JSON object")
    if values.get("model_type", model_type) != model_type:
        raise ValueError(f"{config_file}: model_type is {values.get('model_type')!r}, not {model_type!r}")
    values = {k: v for k, v in values.items() if k != "model_type"}
    # Copy out of the memory map: its tensors are not 64-byte aligned, which changes CPU kernels'
    # rounding (outputs then differ from the saved model's in the last bits) and pins the file open.
    state = {k: v.clone() for k, v in load_file(str(weights_file), device="cpu").items()}
    return values, state


def read_family_folder(folder: Path, model_type: str, config: FamilyConfig, preset: str | None,
                       sizes: Sequence[str] = ("embed_dim", "depth", "num_heads")) -> tuple[Any, dict[str, torch.Tensor]]:
    """Our folder format → (the saved config, state dict). Loaded for a named preset, the saved sizes
    must be the preset's: weights of another size would make its out_indices and documentation wrong."""
    values, state = read_folder(folder, model_type)
    saved = type(config).from_dict(values)
    if preset is not None:
        differ = [k for k in sizes if getattr(saved, k) != getattr(config, k)]
        if differ:
            raise ValueError(
                f"{folder}: its config.json has {', '.join(f'{k}={getattr(saved, k)}' for k in differ)} but "
                f"preset {preset!r} has {', '.join(f'{k}={getattr(config, k)}' for k in differ)}; choose the "
                "preset that matches the weights"
            )
    return saved, state


def locate_weights(
    weights: str | os.PathLike | None,
    *,
    family: str,
    preset: str | None,
    hub_repo: str | None,
    hub_file: str | None,
    model_type: str,
) -> tuple[str, Path | str]:
    """Where ``weights`` points: ``("official", file)``, ``("folder", folder)``; downloads hub files.

    ``weights=None`` → the preset's official hub file; a ``.pth/.pt/.bin/.ckpt`` file → official; a
    folder or its ``model.safetensors`` → our format; ``owner/name`` → the official file when it is the
    preset's repo, else a hub copy of our format.
    """
    if weights is None:
        if hub_repo is None or hub_file is None:
            raise ValueError(
                f"{family} {preset or 'config'} has no released weights; pass weights=<file or folder> or "
                "pretrained=False"
            )
        return "official", hub_download(hub_repo, hub_file)
    path = Path(weights)
    if path.is_file():
        if path.name == "model.safetensors":
            return _folder_or_foreign(path.parent, model_type)
        if path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".safetensors"):
            return "official", path
        raise ValueError(f"{path}: expected an official .pth/.pt file or a folder with model.safetensors")
    if path.is_dir():
        return _folder_or_foreign(path, model_type)
    text = str(weights)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        if text == hub_repo and hub_file is not None:
            return "official", hub_download(text, hub_file)
        config_path = hub_download(text, "config.json")
        hub_download(text, "model.safetensors")
        return _folder_or_foreign(Path(config_path).parent, model_type)
    raise FileNotFoundError(f"{family} weights {text!r}: no such file or folder, and not a hub id (owner/name)")


def _folder_or_foreign(folder: Path, model_type: str) -> tuple[str, Path]:
    """Our folder (its config.json names ``model_type``) or another library's hub folder (timm's: a
    ``model.safetensors`` in the released key layout next to a config without ``model_type``)."""
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    if config_file.is_file() and weights_file.is_file():
        try:
            values = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            values = None
        if isinstance(values, dict) and "model_type" not in values and "architecture" in values:
            return "official", weights_file
    return "folder", folder
