"""Mask2Former decoder head assembled from transformers' Mask2Former components.

The pixel decoder (multi-scale deformable attention encoder + FPN level), the masked-attention
transformer decoder, the Hungarian matcher and the point-sampled losses all come from
``transformers.models.mask2former.modeling_mask2former``; this module only

* wraps them in a ``Mask2FormerPreTrainedModel`` subclass so that ``post_init`` gives them their
  proper initialisation (a bare pixel decoder keeps ``level_embed`` as uninitialised memory),
* runs the decoder with *our* queries (METHOD §4.2): the adapter's query tokens replace the
  learned positional query embedding in every layer, and optionally (``replace_query_feat``)
  the content queries through a Linear layer — the library module always uses its own
  embeddings, so the few lines that prepare the decoder inputs are written here,
* turns semantic masks into per-class binary targets and the per-layer outputs into
  per-class scores,
* builds the sine positions and the deformable-attention reference points in float32, as mmdet does
  (the library builds them in the features' dtype, so under bf16 autocast a 64-wide map's reference
  points were off by up to a quarter pixel and the positions rounded to 8 bits); the pixel decoder's
  outer loop is therefore run here over the library's own submodules.

Given the same weights, the head computes what the authors' and Rein's mmdet/mmseg head computes
(``tests/convert/test_mask2former_import.py`` checks every stage against a re-statement of it).

Defaults are the paper's configuration (METHOD §4.1).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerMaskedAttentionDecoderOutput,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from .light import FEATURE_STRIDES, IGNORE_INDEX, check_features, check_mask

# Output names of ``Mask2FormerLoss`` → the names we log.
_LOSS_NAMES = {"loss_cross_entropy": "loss_cls", "loss_mask": "loss_mask", "loss_dice": "loss_dice"}
# Config fields set from explicit constructor arguments (not allowed again in ``config_overrides``).
_EXPLICIT_FIELDS = {
    "num_labels", "num_queries", "feature_size", "mask_feature_size", "hidden_dim", "decoder_layers",
    "encoder_layers", "num_attention_heads", "dim_feedforward", "encoder_feedforward_dim", "class_weight",
    "mask_weight", "dice_weight", "no_object_weight", "train_num_points", "oversample_ratio",
    "importance_sample_ratio", "use_auxiliary_loss", "feature_strides", "common_stride", "ignore_value",
}


class Mask2FormerOutput(NamedTuple):
    """Per-layer predictions: index 0 is the prediction from the initial queries, -1 the final layer."""

    class_logits: tuple[torch.Tensor, ...]  # each [B, Q, K + 1]; last column = no object
    mask_logits: tuple[torch.Tensor, ...]  # each [B, Q, H/4, W/4]


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, the dtype itself otherwise (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Losses and score maps are computed in float32 even inside a bf16 autocast region."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class Mask2FormerHead(Mask2FormerPreTrainedModel):
    """Mask2Former semantic-segmentation head on a 4-level feature pyramid (strides 4, 8, 16, 32).

    Args:
        num_classes: number of semantic classes K (the no-object class is added internally).
        in_channels: channels of the four feature maps, high → low resolution.
        num_queries: number of queries Q; must equal the adapter's query count when queries are passed.
        hidden_dim: width of pixel decoder, mask features and transformer decoder (multiple of 32: GroupNorm).
        decoder_layers: masked-attention decoder layers; predictions = ``decoder_layers + 1``
            (the extra one comes from the initial queries, HF's ``decoder_layers`` counts it).
        encoder_layers: deformable-attention encoder layers of the pixel decoder.
        num_heads: attention heads in both encoder and decoder.
        dim_feedforward: FFN width of the decoder layers.
        encoder_feedforward_dim: FFN width of the pixel-decoder encoder layers.
        replace_query_feat: with external queries, content queries = Linear(queries) instead of
            the learned content embedding (Rein/DepthForge configs; SpectralMoE leaves it False).
        class_weight, mask_weight, dice_weight: loss weights, also the Hungarian matching costs.
        no_object_weight: CE weight of the no-object class.
        train_num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask losses.
        aux_loss: supervise every intermediate prediction, not only the last.
        **config_overrides: any other ``Mask2FormerConfig`` field (e.g. ``dropout``, ``pre_norm``).
    """

    #: Takes the adapter's query tokens (``forward(features, queries)``).
    uses_queries = True

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int] = (1024,) * 4,
        num_queries: int = 100,
        hidden_dim: int = 256,
        decoder_layers: int = 9,
        encoder_layers: int = 6,
        num_heads: int = 8,
        replace_query_feat: bool = False,
        dim_feedforward: int = 2048,
        encoder_feedforward_dim: int = 1024,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        train_num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        aux_loss: bool = True,
        **config_overrides: Any,
    ) -> None:
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) != len(FEATURE_STRIDES):
            raise ValueError(f"Mask2FormerHead needs 4 feature maps (strides 4, 8, 16, 32), got {in_channels}")
        if hidden_dim % 32:
            raise ValueError(f"hidden_dim must be a multiple of 32 (pixel decoder GroupNorm(32)), got {hidden_dim}")
        known = {f.name for f in dataclasses.fields(Mask2FormerConfig)}
        unknown = sorted(set(config_overrides) - known)
        clashing = sorted(set(config_overrides) & _EXPLICIT_FIELDS)
        if unknown or clashing:
            raise TypeError(
                f"Mask2FormerHead: unknown config overrides {unknown}, overrides of explicit arguments {clashing}"
            )
        config = Mask2FormerConfig(
            num_labels=num_classes,
            num_queries=num_queries,
            feature_size=hidden_dim,
            mask_feature_size=hidden_dim,
            hidden_dim=hidden_dim,
            decoder_layers=decoder_layers + 1,
            encoder_layers=encoder_layers,
            num_attention_heads=num_heads,
            dim_feedforward=dim_feedforward,
            encoder_feedforward_dim=encoder_feedforward_dim,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
            train_num_points=train_num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
            use_auxiliary_loss=aux_loss,
            feature_strides=list(FEATURE_STRIDES),
            common_stride=4,
            ignore_value=IGNORE_INDEX,
            **config_overrides,
        )
        super().__init__(config)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.replace_query_feat = replace_query_feat

        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=list(in_channels))
        self.transformer_module = Mask2FormerTransformerModule(in_features=hidden_dim, config=config)
        self.class_predictor = nn.Linear(hidden_dim, num_classes + 1)
        self.query_feat_proj = nn.Linear(hidden_dim, hidden_dim) if replace_query_feat else None
        self.loss_weights = {"loss_cls": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        # Weights are applied in ``loss`` (as Mask2FormerForUniversalSegmentation.get_loss_dict does).
        self.criterion = Mask2FormerLoss(config, weight_dict=dict(zip(_LOSS_NAMES, self.loss_weights.values())))
        self.post_init()
        # The pixel decoder creates ``level_embed`` with the legacy ``torch.Tensor(...)`` constructor, which
        # ignores a ``with torch.device(...)`` context; move it next to the rest (e.g. meta for counting).
        default_device = torch.get_default_device()
        if default_device.type != "cpu":
            self.to(default_device)

    # ------------------------------------------------------------------ forward
    def forward(self, features: Sequence[torch.Tensor], queries: torch.Tensor | None = None) -> Mask2FormerOutput:
        """Class and mask logits of every decoder stage.

        Args:
            features: 4 maps ``[B, C_i, H/s, W/s]`` for strides 4, 8, 16, 32.
            queries: optional ``[num_queries, hidden_dim]`` query tokens from the adapter; they
                replace the learned positional query embedding (shared by the whole batch).
        """
        check_features(features, self.in_channels, type(self).__name__)
        mask_features, multi_scale_features = self.pixel_decode(list(features))
        decoded = self.decode(multi_scale_features, mask_features, queries)
        class_logits = tuple(self.class_predictor(h.transpose(0, 1)) for h in decoded.intermediate_hidden_states)
        return Mask2FormerOutput(class_logits=class_logits, mask_logits=tuple(decoded.masks_queries_logits))

    def pixel_decode(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``Mask2FormerPixelDecoder.forward`` with float32 positions and reference points.

        Returns the stride-4 mask features and the encoder outputs at strides 32, 16, 8 (low → high
        resolution). In float32 it equals the library module's output exactly (tested).
        """
        decoder = self.pixel_decoder
        levels = decoder.num_feature_levels
        inputs = features[::-1][:levels]  # strides 32, 16, 8
        projected = [decoder.input_projections[i](x) for i, x in enumerate(inputs)]
        shapes = [(int(x.shape[2]), int(x.shape[3])) for x in projected]
        flat = torch.cat([x.flatten(2).transpose(1, 2) for x in projected], 1)
        exact = _at_least_float32(flat.dtype)
        positions = torch.cat([
            decoder.position_embedding(x.shape, x.device, exact).flatten(2).transpose(1, 2)
            + decoder.level_embed[i].to(exact).view(1, 1, -1)
            for i, x in enumerate(inputs)
        ], 1)  # fmt: skip
        batch = flat.shape[0]
        sizes = torch.as_tensor(shapes, dtype=torch.long, device=flat.device)
        starts = torch.cat((sizes.new_zeros((1,)), sizes.prod(1).cumsum(0)[:-1]))
        padding = torch.zeros(flat.shape[:2], dtype=torch.bool, device=flat.device)
        valid_ratios = torch.ones(batch, levels, 2, dtype=exact, device=flat.device)  # → reference points dtype
        encoded = decoder.encoder(
            inputs_embeds=flat, attention_mask=padding, position_embeddings=positions, spatial_shapes_list=shapes,
            level_start_index=starts, valid_ratios=valid_ratios, return_dict=True,
        ).last_hidden_state  # fmt: skip
        outputs = [
            part.transpose(1, 2).reshape(batch, -1, h, w)
            for part, (h, w) in zip(encoded.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        for index, feature in enumerate(features[: decoder.num_fpn_levels][::-1]):
            lateral = decoder.lateral_convolutions[index](feature)
            upsampled = F.interpolate(outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(decoder.output_convolutions[index](lateral + upsampled))
        return decoder.mask_projection(outputs[-1]), tuple(outputs[:levels])

    def decode(
        self,
        multi_scale_features: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        queries: torch.Tensor | None = None,
    ) -> Mask2FormerMaskedAttentionDecoderOutput:
        """Run the library's masked-attention decoder with our choice of positional/content queries.

        Same input preparation as ``Mask2FormerTransformerModule.forward`` (sine positions,
        input projections, level embeddings; low → high resolution), except for the queries.
        """
        module = self.transformer_module
        batch = mask_features.shape[0]
        keys, key_positions, sizes = [], [], []
        for level in range(module.num_feature_levels):
            x = multi_scale_features[level]
            sizes.append(x.shape[-2:])
            position = module.position_embedder(x.shape, x.device, _at_least_float32(x.dtype), None)  # as mmdet
            key_positions.append(position.flatten(2).permute(2, 0, 1))  # [HW, B, C]
            projected = module.input_projections[level](x).flatten(2) + module.level_embed.weight[level][None, :, None]
            keys.append(projected.permute(2, 0, 1))

        if queries is None:
            query_pos = module.queries_embedder.weight
            query_feat = module.queries_features.weight
        else:
            if queries.shape != (self.num_queries, self.hidden_dim):
                raise ValueError(
                    f"queries must be [num_queries={self.num_queries}, hidden_dim={self.hidden_dim}], "
                    f"got {tuple(queries.shape)}"
                )
            query_pos = queries
            query_feat = module.queries_features.weight
            if self.query_feat_proj is not None:
                query_feat = self.query_feat_proj(queries)
        # [Q, B, C]: one set of queries for every image of the batch.
        query_pos = query_pos.unsqueeze(1).expand(-1, batch, -1)
        query_feat = query_feat.unsqueeze(1).expand(-1, batch, -1)

        return module.decoder(
            inputs_embeds=query_feat,
            multi_stage_positional_embeddings=key_positions,
            pixel_embeddings=mask_features,
            encoder_hidden_states=keys,
            query_position_embeddings=query_pos,
            feature_size_list=sizes,
            output_hidden_states=False,
            output_attentions=False,
            return_dict=True,
        )

    # --------------------------------------------------------------------- loss
    def semantic_to_targets(self, mask: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: one binary float mask per class present ``[n_i, H, W]`` and their labels ``[n_i]``.

        Ignored pixels (255) are in no mask; an image without valid pixels gets ``n_i = 0``.
        """
        check_mask(mask, self.num_classes)
        mask_labels, class_labels = [], []
        for image_mask in mask:
            classes = torch.unique(image_mask)
            classes = classes[classes != IGNORE_INDEX]
            mask_labels.append((image_mask[None] == classes[:, None, None]).float())
            class_labels.append(classes.long())
        return mask_labels, class_labels

    def loss(self, predictions: Mask2FormerOutput, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hungarian-matched CE + point-sampled BCE + Dice, weighted and summed over all stages.

        Returns ``{"loss_cls", "loss_mask", "loss_dice"}``; each term is already multiplied by its
        weight and summed over the final and (with ``aux_loss``) every intermediate prediction.
        """
        mask_labels, class_labels = self.semantic_to_targets(mask)
        with _no_autocast(mask.device):
            class_logits = [c.float() for c in predictions.class_logits]
            mask_logits = [m.float() for m in predictions.mask_logits]
            auxiliary = None
            if self.config.use_auxiliary_loss:
                auxiliary = [
                    {"masks_queries_logits": m, "class_queries_logits": c}
                    for m, c in zip(mask_logits[:-1], class_logits[:-1])
                ]
            raw = self.criterion(
                masks_queries_logits=mask_logits[-1],
                class_queries_logits=class_logits[-1],
                mask_labels=mask_labels,
                class_labels=class_labels,
                auxiliary_predictions=auxiliary,
            )
        # Raw keys are "<name>" (last stage) and "<name>_<i>" (auxiliary stage i).
        losses: dict[str, torch.Tensor] = {}
        for raw_name, name in _LOSS_NAMES.items():
            terms = [v for k, v in raw.items() if k == raw_name or k.startswith(raw_name + "_")]
            losses[name] = self.loss_weights[name] * torch.stack(terms).sum()
        return losses

    # ------------------------------------------------------------------- logits
    def logits(self, predictions: Mask2FormerOutput, size: tuple[int, int]) -> torch.Tensor:
        """Semantic scores ``[B, K, *size]``: Σ_q softmax(class)[q, k] (no-object dropped) · sigmoid(mask_q)."""
        class_logits, mask_logits = predictions.class_logits[-1], predictions.mask_logits[-1]
        with _no_autocast(mask_logits.device):
            scores = class_logits.float().softmax(-1)[..., :-1]
            masks = F.interpolate(mask_logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
            return torch.einsum("bqc,bqhw->bchw", scores, masks.sigmoid())
