"""Frozen transformers ViTs (DINOv2, DINOv2 with registers, DINOv3, CLIP vision, SAM vision encoder).

Each wrapper keeps the transformers model as ``self.model`` and steps its blocks itself, so the
segmentor can run an adapter between blocks (DESIGN §4). What a block needs besides the tokens
(DINOv3's RoPE table, CLIP's positional mask argument, SAM's 2-D token layout) is supplied here;
callers always see ``[B, P+N, D]`` tokens.

Three things are changed on the loaded model, on the instance only (no library class is patched):

* **Patch size.** Every backbone yields tokens on the H/16 × W/16 grid. A patch-14 kernel (DINOv2,
  CLIP) is resized to 16×16 by :func:`~spectralmoe.models.patch_embed.resize_patch_kernel` and the
  embedding modules are told their patch is 16, so that transformers' own on-the-fly position
  interpolation targets the 16-grid.
* **Bands.** The patch conv gets one input channel per band, initialised from the RGB kernel by
  :func:`~spectralmoe.models.patch_embed.adapt_kernel_to_bands` (identity for R, G, B order); a model
  pretrained on other bands names their wavelengths in its config (``channel_wavelengths_um``) and
  its filters are spread by the same rule.
* **Frozen.** All parameters stop requiring gradients and the module stays in eval mode.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    PreTrainedConfig,
    PreTrainedModel,
    SamVisionConfig,
    SamVisionModel,
)

from spectralmoe.bands import RGB_TARGETS_UM, as_wavelength_list
from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.patch_embed import adapt_kernel_to_bands, band_colour_assignment, resize_patch_kernel

EFFECTIVE_PATCH_SIZE = 16
KernelResize = Literal["bicubic", "pi"]
_MAX_ROPE_CACHE = 16
# Checkpoint entries that may be absent without harm: the masked-image-modelling token is never used here.
_IGNORABLE_MISSING = ("mask_token",)


def _as_int_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


class HFViTBackbone(FrozenBackbone):
    """Shared machinery of the transformers wrappers: patch-conv adaptation, input checks, freezing.

    Subclasses say where the patch conv lives (``_patch_conv_owner``), how to embed and how to run one
    block. ``in_wavelengths`` (µm, one per band, nan for non-spectral bands) fixes the band layout the
    backbone accepts; the default is R, G, B.
    """

    family: ClassVar[str]

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        in_wavelengths: Sequence[float] | torch.Tensor | None = None,
        out_indices: Sequence[int] | None = None,
        kernel_resize: KernelResize = "bicubic",
        gradient_checkpointing: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if kernel_resize not in ("bicubic", "pi"):
            raise ValueError(f"unknown kernel_resize {kernel_resize!r}; use 'bicubic' or 'pi'")
        self.model = model
        self.name = name or getattr(model.config, "model_type", type(model).__name__)
        config = model.config
        self.embed_dim = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self.patch_size = EFFECTIVE_PATCH_SIZE
        self.native_patch_size = _as_int_pair(config.patch_size)[0]
        self.in_wavelengths: tuple[float, ...] = tuple(
            as_wavelength_list(RGB_TARGETS_UM if in_wavelengths is None else in_wavelengths)
        )
        self.in_channels = len(self.in_wavelengths)
        if self.in_channels == 0:
            raise ValueError(f"{self.name}: in_wavelengths is empty; give one wavelength (µm) per input band")
        indices = default_out_indices(self.num_layers) if out_indices is None else tuple(int(i) for i in out_indices)
        bad = [i for i in indices if not 0 <= i < self.num_layers]
        if bad or not indices:
            raise ValueError(f"{self.name}: out_indices {list(indices)} must lie in [0, {self.num_layers - 1}]")
        self.out_indices = tuple(sorted(set(indices)))
        self.kernel_resize = kernel_resize
        self._adapt_patch_conv()
        self.freeze()
        self.gradient_checkpointing = gradient_checkpointing

    # ----------------------------------------------------------------------------------------- patch conv
    def _patch_conv_owner(self) -> tuple[nn.Module, str]:
        """(module, attribute name) of the patch-embedding ``Conv2d``."""
        raise NotImplementedError

    def _set_patch_geometry(self, num_channels: int) -> None:
        """Tell the library's embedding modules the new channel count and the 16-px patch."""

    @property
    def patch_conv(self) -> nn.Conv2d:
        owner, attr = self._patch_conv_owner()
        return getattr(owner, attr)

    def _adapt_patch_conv(self) -> None:
        """Resize the kernel to 16×16 and spread the RGB filters over the input bands, when needed.

        A kernel that already has one channel per band and is not RGB (e.g. a checkpoint saved after
        adaptation) is kept. On the meta device only the shapes change: there are no values to adapt.
        """
        owner, attr = self._patch_conv_owner()
        conv: nn.Conv2d = getattr(owner, attr)
        weight = conv.weight
        c_old, k = weight.shape[1], weight.shape[-1]
        # A model pretrained on other bands than R, G, B records their wavelengths in its config
        # (``channel_wavelengths_um``, e.g. the packaged synthetic NIR,R,G,B model): its filters are
        # spread by the same nearest-wavelength rule, with its channels in place of R, G, B.
        recorded = getattr(self.model.config, "channel_wavelengths_um", None)
        channels = tuple(as_wavelength_list(recorded)) if recorded is not None else (RGB_TARGETS_UM if c_old == 3
                                                                                      else None)  # fmt: skip
        if channels is not None and len(channels) != c_old:
            raise ValueError(f"{self.name}: channel_wavelengths_um lists {len(channels)} wavelengths for a patch "
                             f"embedding of {c_old} channels")  # fmt: skip
        if channels is not None:
            identity_bands = self.in_channels == c_old and band_colour_assignment(
                self.in_wavelengths, channels) == [[i] for i in range(c_old)]
        elif c_old == self.in_channels:
            identity_bands = True
        else:
            raise ValueError(
                f"{self.name}: the loaded patch embedding has {c_old} input channels; it can be adapted from RGB "
                f"(3 channels) or used as is for {c_old} bands, but in_wavelengths gives {self.in_channels} bands"
            )
        if identity_bands and k == EFFECTIVE_PATCH_SIZE:
            self._set_patch_geometry(self.in_channels)
            return
        new_conv = nn.Conv2d(
            self.in_channels,
            conv.out_channels,
            kernel_size=EFFECTIVE_PATCH_SIZE,
            stride=EFFECTIVE_PATCH_SIZE,
            bias=conv.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        if not weight.is_meta:
            with torch.no_grad():
                new_weight = resize_patch_kernel(weight.detach(), EFFECTIVE_PATCH_SIZE, method=self.kernel_resize)
                if not identity_bands:
                    assert channels is not None
                    new_weight = adapt_kernel_to_bands(new_weight, self.in_wavelengths, channels)
                new_conv.weight.copy_(new_weight)
                if conv.bias is not None:
                    new_conv.bias.copy_(conv.bias)
        setattr(owner, attr, new_conv)
        self._set_patch_geometry(self.in_channels)

    # ------------------------------------------------------------------------------------------- checks
    def _check_input(self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None) -> tuple[int, int]:
        """Fail early on a wrong band count or a size that is not a multiple of 16; return the grid."""
        if image.ndim != 4:
            raise ValueError(f"{self.name}: expected an image batch [B, C, H, W], got shape {tuple(image.shape)}")
        _, channels, height, width = image.shape
        if channels != self.in_channels:
            raise ValueError(
                f"{self.name}: backbone built for {self.in_channels} bands (wavelengths {list(self.in_wavelengths)} "
                f"µm) but the image has {channels} bands (shape {tuple(image.shape)}); build it with "
                f"in_wavelengths of this sensor"
            )
        if wavelengths is not None:
            count = wavelengths.shape[-1] if isinstance(wavelengths, torch.Tensor) else len(wavelengths)
            if count != self.in_channels:
                raise ValueError(
                    f"{self.name}: {count} wavelengths were passed with the image (shape {tuple(image.shape)}) but "
                    f"the backbone was built for {self.in_channels} bands {list(self.in_wavelengths)}"
                )
        if height % EFFECTIVE_PATCH_SIZE or width % EFFECTIVE_PATCH_SIZE:
            raise ValueError(
                f"{self.name}: image height and width must be multiples of {EFFECTIVE_PATCH_SIZE}, got shape "
                f"{tuple(image.shape)}"
            )
        return height // EFFECTIVE_PATCH_SIZE, width // EFFECTIVE_PATCH_SIZE

    def _input_dtype(self) -> torch.dtype:
        return self.patch_conv.weight.dtype

    def final_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's final normalisation of the token sequence; identity where it has none.

        Used to compare manual stepping with the library's ``last_hidden_state`` (CLIP: identity, its
        ``post_layernorm`` only acts on the pooled token, see ``pooled``; SAM: identity, its
        ``last_hidden_state`` is the output of ``neck``).
        """
        return tokens

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, bands={self.in_channels}, embed_dim={self.embed_dim}, layers={self.num_layers}, "
            f"prefix={self.num_prefix_tokens}, patch={self.patch_size} (native {self.native_patch_size}), "
            f"out_indices={list(self.out_indices)}"
        )


class DINOv2Backbone(HFViTBackbone):
    """DINOv2 (``Dinov2Model``) or DINOv2 with registers (``Dinov2WithRegistersModel``): cls (+ registers).

    Both models interpolate their learned position table bicubically to the patch grid inside their
    embedding module, using the patch size stored on that module, which is set to 16 here.
    """

    family = "dinov2"

    def __init__(self, model: Dinov2Model | Dinov2WithRegistersModel, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.num_prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.encoder.layer

    def _patch_conv_owner(self) -> tuple[nn.Module, str]:
        return self.model.embeddings.patch_embeddings, "projection"

    def _set_patch_geometry(self, num_channels: int) -> None:
        patch_embeddings = self.model.embeddings.patch_embeddings
        patch_embeddings.num_channels = num_channels
        patch_embeddings.patch_size = (EFFECTIVE_PATCH_SIZE, EFFECTIVE_PATCH_SIZE)
        self.model.embeddings.patch_size = EFFECTIVE_PATCH_SIZE

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = self._check_input(image, wavelengths)
        return self.model.embeddings(image.to(self._input_dtype())), grid

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.blocks[index](tokens)

    def final_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's final LayerNorm (``last_hidden_state`` = layernorm of the last block output)."""
        return self.model.layernorm(tokens)


class DINOv3Backbone(HFViTBackbone):
    """DINOv3 ViT (``DINOv3ViTModel``): cls + 4 registers, 2-D RoPE on the patch tokens.

    RoPE is computed for the patch grid by the model's own module and cached per (grid, device,
    dtype). transformers applies it to the *last* ``h*w`` tokens of the sequence, so prompts inserted
    after the prefix tokens are allowed. The RoPE coordinate augmentation only acts in training mode,
    which a frozen backbone never enters.
    """

    family = "dinov3"

    def __init__(self, model: DINOv3ViTModel, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.num_prefix_tokens = 1 + int(model.config.num_register_tokens)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.model.layer

    def _patch_conv_owner(self) -> tuple[nn.Module, str]:
        return self.model.embeddings, "patch_embeddings"

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = self._check_input(image, wavelengths)
        return self.model.embeddings(image.to(self._input_dtype())), grid

    def rope(
        self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each ``[h*w, head_dim]``, as the model computes them for an image of this grid."""
        # Inside torch.compile the table is computed in the graph: the cache (a guard on its contents would
        # recompile) and the inference-mode check (which dynamo cannot trace) serve eager runs only.
        compiling = torch.compiler.is_compiling()
        inference = False if compiling else torch.is_inference_mode_enabled()
        key = (grid, device, dtype, inference)
        cached = None if compiling else self._rope_cache.get(key)
        if cached is not None:
            return cached
        # The RoPE module reads only the shape, device and dtype of its input: a 0-channel image suffices.
        native = _as_int_pair(self.model.config.patch_size)
        probe = torch.empty((1, 0, grid[0] * native[0], grid[1] * native[1]), device=device, dtype=dtype)
        with torch.no_grad():
            cos_sin = self.model.rope_embeddings(probe)
        if compiling:
            return cos_sin
        if len(self._rope_cache) >= _MAX_ROPE_CACHE:
            self._rope_cache.clear()
        self._rope_cache[key] = cos_sin
        return cos_sin

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if tokens.shape[1] < grid[0] * grid[1]:
            raise ValueError(f"{self.name}: {tokens.shape[1]} tokens cannot hold a {grid[0]}×{grid[1]} patch grid")
        position_embeddings = self.rope(grid, tokens.device, tokens.dtype)
        return self.blocks[index](tokens, position_embeddings=position_embeddings)

    def final_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's final LayerNorm (``last_hidden_state`` = norm of the last block output)."""
        return self.model.norm(tokens)


class CLIPVisionBackbone(HFViTBackbone):
    """CLIP vision tower (``CLIPVisionModel``): cls token, pre-LayerNorm inside ``embed``.

    Position embeddings are interpolated by the model (``interpolate_pos_encoding=True``) to the
    16-grid. transformers' ``last_hidden_state`` is *not* normalised (``post_layernorm`` only acts on
    the pooled cls token), so :meth:`final_norm` is the identity and :meth:`pooled` gives the latter.
    """

    family = "clip"

    def __init__(self, model: CLIPVisionModel, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.num_prefix_tokens = 1

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.encoder.layers

    def _patch_conv_owner(self) -> tuple[nn.Module, str]:
        return self.model.embeddings, "patch_embedding"

    def _set_patch_geometry(self, num_channels: int) -> None:
        self.model.embeddings.patch_size = EFFECTIVE_PATCH_SIZE

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = self._check_input(image, wavelengths)
        tokens = self.model.embeddings(image.to(self._input_dtype()), interpolate_pos_encoding=True)
        return self.model.pre_layrnorm(tokens), grid

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # CLIP layers take the attention mask positionally; images need none.
        return self.blocks[index](tokens, None)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's ``pooler_output``: post-LayerNorm of the cls token."""
        return self.model.post_layernorm(tokens[:, 0])


class SAMVisionBackbone(HFViTBackbone):
    """SAM image encoder (``SamVisionModel``): no prefix tokens, windowed + global attention on a 2-D grid.

    The library's patch module refuses any size but ``config.image_size``; the config is kept (so that
    pretrained shapes load) and the projection is called directly, with the absolute position table
    ``(1, 64, 64, C)`` resized bicubically to the grid. Relative positions of the global layers are
    resized by the library itself. Blocks work on ``(B, h, w, C)``: tokens are reshaped on the way in
    and out, so extra (prompt) tokens cannot be supported.
    """

    family = "sam"

    def __init__(self, model: SamVisionModel, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.num_prefix_tokens = 0
        self.global_attn_indexes = tuple(int(i) for i in model.config.global_attn_indexes)

    @property
    def encoder(self) -> nn.Module:
        return self.model.vision_encoder

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.vision_encoder.layers

    def _patch_conv_owner(self) -> tuple[nn.Module, str]:
        return self.model.vision_encoder.patch_embed, "projection"

    def _set_patch_geometry(self, num_channels: int) -> None:
        patch_embed = self.model.vision_encoder.patch_embed
        patch_embed.num_channels = num_channels
        patch_embed.patch_size = (EFFECTIVE_PATCH_SIZE, EFFECTIVE_PATCH_SIZE)

    def position_embedding(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | None:
        """Absolute position table ``(1, h, w, C)`` for the grid (bicubic resize, computed in float32)."""
        table = self.encoder.pos_embed
        if table is None:
            return None
        if tuple(table.shape[1:3]) == tuple(grid):
            return table.to(dtype)
        resized = F.interpolate(table.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1).to(dtype)

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = self._check_input(image, wavelengths)
        maps = self.patch_conv(image.to(self._input_dtype())).permute(0, 2, 3, 1)  # (B, h, w, C)
        position = self.position_embedding(grid, maps.dtype)
        if position is not None:
            maps = maps + position
        return maps.flatten(1, 2), grid

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, count, dim = tokens.shape
        height, width = grid
        if count != height * width:
            raise ValueError(
                f"{self.name}: SAM blocks work on the 2-D patch grid only; got {count} tokens for a {height}×{width} "
                f"grid (extra prompt / prefix tokens are not supported by SAM)"
            )
        maps = self.blocks[index](tokens.reshape(batch, height, width, dim))
        return maps.reshape(batch, count, dim)

    def neck(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The model's neck: ``last_hidden_state`` ``[B, output_channels, h, w]`` of ``SamVisionModel``."""
        return self.encoder.neck(tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1]))


# family → (config class, model class, wrapper class)
HF_FAMILIES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel], type[HFViTBackbone]]] = {
    "dinov2": (Dinov2Config, Dinov2Model, DINOv2Backbone),
    "dinov2-reg": (Dinov2WithRegistersConfig, Dinov2WithRegistersModel, DINOv2Backbone),
    "dinov3": (DINOv3ViTConfig, DINOv3ViTModel, DINOv3Backbone),
    "clip": (CLIPVisionConfig, CLIPVisionModel, CLIPVisionBackbone),
    "sam": (SamVisionConfig, SamVisionModel, SAMVisionBackbone),
}


# model_type values whose checkpoints each family loads (full CLIP / SAM checkpoints hold the vision tower).
_ACCEPTED_MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "dinov2": ("dinov2",),
    "dinov2-reg": ("dinov2_with_registers",),
    "dinov3": ("dinov3_vit",),
    "clip": ("clip_vision_model", "clip"),
    "sam": ("sam_vision_model", "sam"),
}


def _family(family: str) -> tuple[type[PreTrainedConfig], type[PreTrainedModel], type[HFViTBackbone]]:
    try:
        return HF_FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown transformers backbone family {family!r}; known: {', '.join(HF_FAMILIES)}") from None


def wrap_hf_model(
    model: PreTrainedModel,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    out_indices: Sequence[int] | None = None,
    kernel_resize: KernelResize = "bicubic",
    gradient_checkpointing: bool = False,
    name: str | None = None,
) -> HFViTBackbone:
    """Wrap an already built transformers model (it is modified in place: adapted, frozen)."""
    for family, (_, model_cls, wrapper_cls) in HF_FAMILIES.items():
        if type(model) is model_cls:
            return wrapper_cls(
                model,
                in_wavelengths=in_wavelengths,
                out_indices=out_indices,
                kernel_resize=kernel_resize,
                gradient_checkpointing=gradient_checkpointing,
                name=name,
            )
    raise TypeError(
        f"cannot wrap {type(model).__name__}; supported: {', '.join(m.__name__ for _, m, _ in HF_FAMILIES.values())}"
    )


def build_hf_model(
    family: str,
    config: dict[str, Any] | None = None,
    *,
    weights: str | os.PathLike | None = None,
    name: str | None = None,
) -> PreTrainedModel:
    """The bare transformers model: random from ``config`` when ``weights`` is None, else ``from_pretrained``.

    ``weights`` is a hub id or a local folder (``config.json`` + ``model.safetensors``, as written by
    ``save_pretrained``; a full CLIP / SAM checkpoint also works, its vision part is taken). Weights are
    loaded in float32. A checkpoint that leaves model weights uninitialised is refused, because a
    frozen backbone would silently run on random values.
    """
    config_cls, model_cls, _ = _family(family)
    label = name or family
    if weights is None:
        if config is None:
            raise ValueError(f"{label}: give a config dict or weights to build a {model_cls.__name__}")
        return model_cls(config_cls(**config))
    source = os.fspath(weights)
    looks_local = isinstance(weights, os.PathLike) or os.path.isabs(source) or source.startswith((".", "~"))
    if looks_local and not os.path.isdir(os.path.expanduser(source)):
        raise FileNotFoundError(f"{label}: weights folder {source!r} does not exist")
    location = os.path.expanduser(source) if looks_local else source
    try:
        stored_type = config_cls.get_config_dict(location)[0].get("model_type")
        if stored_type not in _ACCEPTED_MODEL_TYPES[family]:
            raise ValueError(
                f"{label}: {source!r} holds a {stored_type!r} checkpoint, not a {family} one "
                f"(accepted model types: {', '.join(_ACCEPTED_MODEL_TYPES[family])})"
            )
        model, info = model_cls.from_pretrained(location, dtype=torch.float32, output_loading_info=True)
    except OSError as err:
        raise OSError(
            f"{label}: could not load {model_cls.__name__} weights from {source!r} ({err}). Without internet access, "
            f"download them elsewhere (e.g. `huggingface-cli download {source}`) and pass weights=<local folder>"
        ) from err
    except RuntimeError as err:  # shape mismatches between checkpoint and config
        raise ValueError(f"{label}: the weights in {source!r} do not fit {model_cls.__name__}: {err}") from err
    missing = sorted(k for k in info.get("missing_keys", ()) if not any(s in k for s in _IGNORABLE_MISSING))
    if missing:
        shown = ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
        raise ValueError(
            f"{label}: {len(missing)} weights of {model_cls.__name__} are missing from {source!r} ({shown}); "
            f"is this a {family} checkpoint?"
        )
    mismatched = info.get("mismatched_keys") or ()
    if mismatched:
        raise ValueError(f"{label}: weights with mismatched shapes in {source!r}: {sorted(map(str, mismatched))[:8]}")
    return model


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
