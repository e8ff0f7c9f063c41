"""Which part of an mmseg checkpoint goes where, and the adapter sizes its tensors reveal.

The authors' and Rein's backbones override ``state_dict`` so that their checkpoints hold only the
trained parts (CHECKPOINT_IMPORT.md §1): ``decode_head.*`` (the Mask2Former head) and the adapter,
``backbone.depthmoe.*`` (SpectralMoE's released ``DepthMoE`` module) or ``backbone.reins.*`` (Rein;
an older Rein layout keeps the query link in the head as ``decode_head.token2query.*``). Anything else
is refused by name: a key we do not know would otherwise be silently dropped, and the model would run
without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

__all__ = ["RoutedCheckpoint", "config_hints", "rein_options", "route_state_dict", "spectralmoe_options"]

HEAD_PREFIX = "decode_head."
ADAPTER_PREFIXES = {"backbone.depthmoe.": "spectralmoe", "backbone.reins.": "rein"}
LEGACY_QUERY_PREFIX = "decode_head.token2query."
#: Rein's old in-head query link → the names its adapter uses today.
_LEGACY_QUERY_KEYS = {
    "transforms.0.weight": "transform.weight", "transforms.0.bias": "transform.bias",
    "merge.weight": "merge.weight", "merge.bias": "merge.bias",
}  # fmt: skip


@dataclass
class RoutedCheckpoint:
    """An mmseg checkpoint's tensors split by destination (prefixes removed)."""

    adapter: str  # "spectralmoe" | "rein"
    adapter_state: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]
    legacy_query_link: bool = False
    notes: list[str] = field(default_factory=list)


def route_state_dict(sd: Mapping[str, torch.Tensor], where: str = "checkpoint") -> RoutedCheckpoint:
    """Split ``sd`` into head and adapter parts; refuse every key that belongs to neither."""
    head: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {name: {} for name in ADAPTER_PREFIXES.values()}
    legacy: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key.startswith(LEGACY_QUERY_PREFIX):
            name = _LEGACY_QUERY_KEYS.get(key[len(LEGACY_QUERY_PREFIX):])
            if name is None:
                unknown.append(key)
            else:
                legacy[name] = value
        elif key.startswith(HEAD_PREFIX):
            head[key[len(HEAD_PREFIX):]] = value
        else:
            prefix = next((p for p in ADAPTER_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                unknown.append(key)
            else:
                adapters[ADAPTER_PREFIXES[prefix]][key[len(prefix):]] = value
    if unknown:
        hint = ""
        if any(k.startswith("backbone.") for k in unknown):
            hint = (" — frozen backbone or depth-model weights (or another method's adapter, e.g. DepthForge's, "
                    "which this importer does not know); give frozen weights with --backbone-weights/"
                    "--depth-weights")  # fmt: skip
        shown = ", ".join(sorted(unknown)[:12]) + (" …" if len(unknown) > 12 else "")
        raise KeyError(
            f"{where}: {len(unknown)} keys are neither the Mask2Former head nor a known adapter{hint}: {shown}"
        )
    present = [name for name, part in adapters.items() if part]
    if not head:
        raise KeyError(f"{where}: no decode_head.* keys (no Mask2Former head)")
    if len(present) != 1:
        raise KeyError(
            f"{where}: expected the keys of one adapter (backbone.depthmoe.* for SpectralMoE or backbone.reins.* for "
            f"Rein), found {present or 'none'}"
        )
    adapter = present[0]
    routed = RoutedCheckpoint(adapter, adapters[adapter], head)
    if legacy:
        if adapter != "rein":
            raise KeyError(f"{where}: decode_head.token2query.* (Rein's old query link) beside a {adapter} adapter")
        clash = sorted(set(legacy) & set(routed.adapter_state))
        if clash:
            raise KeyError(
                f"{where}: the query link is stored twice (decode_head.token2query and backbone.reins): {clash}"
            )
        routed.adapter_state.update(legacy)
        routed.legacy_query_link = True
        routed.notes.append("query link read from the legacy decode_head.token2query.* keys")
    return routed


def _layer_expert_shapes(sd: Mapping[str, torch.Tensor], name: str) -> dict[tuple[int, int], torch.Size]:
    pattern = re.compile(rf"{name}\.(\d+)\.(\d+)$")
    return {(int(m.group(1)), int(m.group(2))): v.shape for k, v in sd.items() if (m := pattern.match(k))}


def spectralmoe_options(sd: Mapping[str, torch.Tensor], where: str = "backbone.depthmoe") -> dict[str, Any]:
    """``SpectralMoE`` keyword arguments of the released module, from its tensor shapes.

    Layers, experts, ranks, token length, width, query width, noisy gating and the two routers per layer
    are read from the tensors; ``gating`` and ``top_k`` are not visible in them and default to every
    released config's values (laplace, 1) — see :func:`config_hints` for reading them from the
    checkpoint's config text when it is there.
    """
    experts = _layer_expert_shapes(sd, "experts_a")
    if not experts:
        raise KeyError(f"{where}: no experts_a.<layer>.<expert> tensors; is this SpectralMoE's DepthMoE module?")
    layers = sorted({layer for layer, _ in experts})
    per_layer = sorted({e for _, e in experts})
    if layers != list(range(len(layers))) or per_layer != list(range(len(per_layer))):
        raise ValueError(f"{where}: expert indices are not 0..n-1: layers {layers}, experts {per_layer}")
    if len(experts) != len(layers) * len(per_layer):
        raise ValueError(f"{where}: not every layer has all {len(per_layer)} experts")
    ranks = [int(experts[(0, e)][1]) for e in per_layer]
    tokens = {int(shape[0]) for shape in experts.values()}
    if len(tokens) != 1 or any(list(experts[(layer, e)])[1] != ranks[e] for layer, e in experts):
        raise ValueError(f"{where}: experts differ in token count or rank across layers")
    gates = _layer_expert_shapes(sd, "w_gate")
    routers = sorted({m for _, m in gates})
    if len(per_layer) > 1 and routers != [0, 1]:
        raise ValueError(
            f"{where}: {len(routers)} router(s) per layer; the released module has two (visual, depth) — a shared or "
            "depth-less variant cannot be told apart from the tensors"
        )
    width = int(_need(sd, "experts_b.0.0", where).shape[1])
    transform = _need(sd, "transform.weight", where)
    return {
        "variant": "official",
        "num_experts": len(per_layer),
        "rank": ranks[0] if len(set(ranks)) == 1 else ranks,
        "token_length": tokens.pop(),
        "query_dim": int(transform.shape[0]),
        "noisy_gating": any(k.startswith("w_noise.") for k in sd),
        "gating": "laplace",
        "top_k": 1,
        "_layers": len(layers),
        "_width": width,
    }


def rein_options(sd: Mapping[str, torch.Tensor], where: str = "backbone.reins") -> dict[str, Any]:
    """``Rein`` keyword arguments from Rein's ``Reins``/``LoRAReins`` tensors."""
    transform = _need(sd, "transform.weight", where)
    if "learnable_tokens_a" in sd:
        a, b = sd["learnable_tokens_a"], _need(sd, "learnable_tokens_b", where)
        layers, tokens, rank, width = int(a.shape[0]), int(a.shape[1]), int(a.shape[2]), int(b.shape[2])
        options: dict[str, Any] = {"rank": rank, "low_rank": True}
    else:
        full = _need(sd, "learnable_tokens", where)
        layers, tokens, width = (int(v) for v in full.shape)
        options = {"low_rank": False}
    return {**options, "token_length": tokens, "query_dim": int(transform.shape[0]), "_layers": layers,
            "_width": width}  # fmt: skip


def _need(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{where}: missing {key!r}")
    return sd[key]


_HINTS = {
    "gating": re.compile(r"""\bgating\s*=\s*['"](\w+)['"]"""),
    "top_k": re.compile(r"\btop_k\s*=\s*(\d+)"),
    "replace_query_feat": re.compile(r"\breplace_query_feat\s*=\s*(True|False)"),
}


def config_hints(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Settings the tensors do not show, read from the config text mmengine stores in ``meta['cfg']``
    (each only when it appears exactly once, with one value)."""
    text = meta.get("cfg")
    if not isinstance(text, str):
        return {}
    hints: dict[str, Any] = {}
    for name, pattern in _HINTS.items():
        values = {m.group(1) for m in pattern.finditer(text)}
        if len(values) == 1:
            value = values.pop()
            if name == "top_k":
                hints[name] = int(value)
            else:
                hints[name] = value == "True" if name == "replace_query_feat" else value
    return hints
