"""What ``spectralmoe demo`` reports: scores over seeds, which differences the seeds can resolve,
the figures, ``report.md`` and ``metrics.json``.

**Seeds.** Each method is trained with N seeds on the same world (weight initialisation and data
order change, the tiles do not). A table cell is the mean ± the sample standard deviation over the
seeds. Two methods' difference at a place (held-out source, mean target, a target domain)
**exceeds the seed spread** when their seed ranges do not overlap — every seed of one scored above
every seed of the other; otherwise the demo cannot tell them apart there, whatever the means say.
With one seed nothing can be resolved and the report says so.

Everything is labelled SYNTHETIC: the numbers exercise the pipeline on the package's synthetic
world and say nothing about real imagery or the paper's benchmarks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "METHOD_LABELS",
    "SYNTHETIC_BANNER",
    "Comparison",
    "MethodResult",
    "RunResult",
    "Sample",
    "compare_methods",
    "comparison_sentences",
    "mean_std",
    "results_table",
    "seed_table",
    "write_figures",
]

METHOD_LABELS = {"freeze": "Freeze", "rein": "Rein", "spectralmoe": "SpectralMoE"}
SYNTHETIC_BANNER = "SYNTHETIC DATA — not real imagery; numbers say nothing about real benchmarks"
SOURCE_PLACE = "source"
MEAN_PLACE = "mean target"


def label_of(method: str) -> str:
    return METHOD_LABELS.get(method, method)


# ------------------------------------------------------------------------------------------ results
@dataclass
class RunResult:
    """One trained model (a method with one seed): scores in percent and costs."""

    seed: int
    source: dict[str, Any]
    targets: dict[str, dict[str, Any]]
    mean_target: dict[str, float]
    train_seconds: float
    eval_seconds: float

    @property
    def drop(self) -> dict[str, float]:
        """Held-out source score minus the mean target score (percentage points)."""
        return {key: self.source[key] - self.mean_target[key] for key in ("mIoU", "mAcc")}

    def score(self, place: str, key: str = "mIoU") -> float:
        """``place``: ``"source"``, ``"mean target"``, ``"drop"`` or a target domain name."""
        if place == SOURCE_PLACE:
            return float(self.source[key])
        if place == MEAN_PLACE:
            return float(self.mean_target[key])
        if place == "drop":
            return float(self.drop[key])
        return float(self.targets[place][key])


@dataclass
class MethodResult:
    """A method's runs over seeds."""

    method: str
    runs: list[RunResult] = field(default_factory=list)
    trainable_parameters: int = 0
    method_parameters: int = 0

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def targets(self) -> list[str]:
        return list(self.runs[0].targets)

    def values(self, place: str, key: str = "mIoU") -> list[float]:
        return [run.score(place, key) for run in self.runs]

    def mean(self, place: str, key: str = "mIoU") -> float:
        return mean_std(self.values(place, key))[0]

    def std(self, place: str, key: str = "mIoU") -> float:
        return mean_std(self.values(place, key))[1]

    @property
    def train_seconds(self) -> float:
        return round(sum(run.train_seconds for run in self.runs), 1)

    @property
    def eval_seconds(self) -> float:
        return round(sum(run.eval_seconds for run in self.runs), 1)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value) of finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = float(np.mean(finite))
    return mean, float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")


# -------------------------------------------------------------------------------------- comparisons
@dataclass(frozen=True)
class Comparison:
    """Method ``a`` against method ``b`` at one place (``mean_a`` ≥ ``mean_b``)."""

    place: str
    key: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    range_a: tuple[float, float]
    range_b: tuple[float, float]
    seeds: int

    @property
    def delta(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def exceeds_spread(self) -> bool:
        """Every seed of ``a`` above every seed of ``b`` (needs 2+ seeds each)."""
        return self.seeds > 1 and self.range_a[0] > self.range_b[1]

    def to_dict(self) -> dict[str, Any]:
        return {"place": self.place, "key": self.key, "higher": self.a, "lower": self.b,
                "mean_higher": self.mean_a, "mean_lower": self.mean_b, "delta": self.delta,
                "range_higher": list(self.range_a), "range_lower": list(self.range_b),
                "exceeds_seed_spread": self.exceeds_spread}  # fmt: skip


def compare_methods(results: dict[str, MethodResult], key: str = "mIoU") -> list[Comparison]:
    """Every pair of methods at the held-out source, the mean target and each target domain."""
    methods = list(results)
    if not methods:
        return []
    places = [SOURCE_PLACE, MEAN_PLACE, *results[methods[0]].targets]
    out = []
    for place in places:
        for i, first in enumerate(methods):
            for second in methods[i + 1:]:
                a, b = results[first], results[second]
                if a.mean(place, key) < b.mean(place, key):
                    a, b = b, a
                va, vb = a.values(place, key), b.values(place, key)
                out.append(Comparison(place, key, a.method, b.method, a.mean(place, key), b.mean(place, key),
                                      (min(va), max(va)), (min(vb), max(vb)), min(len(va), len(vb))))  # fmt: skip
    return out


def _place_words(place: str) -> str:
    return {SOURCE_PLACE: "the held-out source tiles", MEAN_PLACE: "the mean over target domains"}.get(place, place)


def comparison_sentences(comparisons: Sequence[Comparison], focus: str = "spectralmoe",
                         seeds: int | None = None) -> list[str]:  # fmt: skip
    """Markdown bullets: per pair at the source and the mean target, whether the difference exceeds
    the seed spread; then how many per-domain differences do; then the verdict on ``focus``."""
    if seeds is None:
        seeds = min((c.seeds for c in comparisons), default=1)
    lines = []
    if not comparisons:
        lines.append("* One method only: nothing to compare.")
    if seeds < 2:
        lines.append(f"* With {seeds} seed the seed-to-seed spread is unknown: **no difference below can be told "
                     "apart from seed noise** (run with `--seeds 2` or more).")  # fmt: skip
    for c in comparisons:
        if c.place not in (SOURCE_PLACE, MEAN_PLACE):
            continue
        span = (f"seeds {c.range_a[0]:.1f}–{c.range_a[1]:.1f} vs {c.range_b[0]:.1f}–{c.range_b[1]:.1f}"
                if seeds > 1 else "one seed")  # fmt: skip
        verdict = ("**exceeds the seed spread** (every seed of the first above every seed of the second)"
                   if c.exceeds_spread else "is **within the seed spread** (the seed ranges overlap): not resolved")
        lines.append(f"* {_place_words(c.place).capitalize()}: {label_of(c.a)} {c.mean_a:.1f} vs {label_of(c.b)} "
                     f"{c.mean_b:.1f} {c.key} ({c.delta:+.1f} points; {span}) — {verdict}.")  # fmt: skip
    per_domain = [c for c in comparisons if c.place not in (SOURCE_PLACE, MEAN_PLACE)]
    if per_domain:
        resolved = [c for c in per_domain if c.exceeds_spread]
        detail = "; ".join(f"{label_of(c.a)} > {label_of(c.b)} on {c.place} ({c.delta:+.1f})" for c in resolved)
        lines.append(f"* Per target domain: {len(resolved)} of {len(per_domain)} pairwise differences exceed the seed "
                     f"spread" + (f" ({detail})." if resolved else "."))  # fmt: skip
    mean_pairs = [c for c in comparisons if c.place == MEAN_PLACE and focus in (c.a, c.b)]
    if mean_pairs:
        name = label_of(focus)
        wins = [label_of(c.b) for c in mean_pairs if c.a == focus and c.exceeds_spread]
        losses = [label_of(c.a) for c in mean_pairs if c.b == focus and c.exceeds_spread]
        ties = [f"{label_of(c.b if c.a == focus else c.a)} ({'higher' if c.b == focus else 'lower'} mean)"
                for c in mean_pairs if not c.exceeds_spread]  # fmt: skip
        parts = []
        if wins:
            parts.append(f"beats {', '.join(wins)} beyond the seed spread")
        if losses:
            parts.append(f"is **worse** than {', '.join(losses)} beyond the seed spread")
        if ties:
            parts.append(f"cannot be told apart from {', '.join(ties)}")
        headline = (f"{name} beats every baseline on the mean target beyond the seed spread"
                    if len(wins) == len(mean_pairs)
                    else f"{name} does **not** beat the baselines on the mean target beyond the seed spread")  # fmt: skip
        lines.append(f"* **Verdict:** {headline}: it {'; it '.join(parts)}.")
    return lines


# ------------------------------------------------------------------------------------------ tables
def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _cell(result: MethodResult, place: str, key: str) -> str:
    mean, std = result.mean(place, key), result.std(place, key)
    return _fmt(mean) if math.isnan(std) else f"{_fmt(mean)} ± {std:.1f}"


def results_table(results: dict[str, MethodResult], source: str, key: str = "mIoU") -> str:
    """Markdown table: mean ± std over seeds per domain, mean target (bold) and drop."""
    domains = next(iter(results.values())).targets
    header = ["method", f"{source} (source, held out)", *domains, "mean target", "drop"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, result in results.items():
        cells = [label_of(method), _cell(result, SOURCE_PLACE, key)]
        cells += [_cell(result, d, key) for d in domains]
        cells += [f"**{_cell(result, MEAN_PLACE, key)}**", _cell(result, "drop", key)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(results: dict[str, MethodResult], key: str = "mIoU") -> str:
    """Markdown table: every run's held-out source and mean target score."""
    lines = [f"| method | seed | source (held out) {key} | mean target {key} | train s |", "|---|---:|---:|---:|---:|"]
    for method, result in results.items():
        for run in result.runs:
            lines.append(f"| {label_of(method)} | {run.seed} | {_fmt(run.score(SOURCE_PLACE, key))} | "
                         f"{_fmt(run.score(MEAN_PLACE, key))} | {run.train_seconds:.0f} |")  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ figures
@dataclass
class Sample:
    """One tile shown in the figures: its domain, raw image, label and the sensor's wavelengths."""

    domain: str
    title: str
    image: np.ndarray
    label: np.ndarray
    wavelengths: list[float]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    routing: np.ndarray | None = None


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _panel(ax: Any, rgba: np.ndarray, title: str | None = None) -> None:
    ax.imshow(rgba, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour enlargement of a patch grid to the tile's pixel size."""
    rows = np.arange(size[0]) * grid.shape[0] // size[0]
    cols = np.arange(size[1]) * grid.shape[1] // size[1]
    return grid[rows[:, None], cols[None, :]]


def _routing_rgba(sample: Sample, num_experts: int, background: np.ndarray) -> np.ndarray:
    from spectralmoe.viz import colorize_routing

    assert sample.routing is not None
    rgba = colorize_routing(_upsample(sample.routing, sample.label.shape), num_experts).astype(np.float32)
    blended = 0.65 * rgba[..., :3] + 0.35 * background[..., :3].astype(np.float32)
    out = np.empty_like(background)
    out[..., :3] = np.round(blended).astype(np.uint8)
    out[..., 3] = 255
    return out


def samples_figure(
    samples: list[Sample], methods: Sequence[str], classes: Sequence[str], palette: Sequence[Sequence[int]],
    num_experts: int | None, routing_layer: int | None, source: str, seed: int,
) -> Any:  # fmt: skip
    """The ``samples.png`` figure: one row per domain; columns composite, ground truth, each method's
    map, SpectralMoE's experts — every column titled."""
    from spectralmoe.viz import add_legend, colorize, composite

    routed = num_experts is not None and all(s.routing is not None for s in samples)
    titles = ["false colour (NIR,R,G)", "ground truth", *(f"{label_of(m)} (seed {seed})" for m in methods)]
    if routed:
        titles.append(f"SpectralMoE experts\n(layer {routing_layer}, 0-based)")
    fig = _figure(1.8 * len(titles) + 1.6, 1.8 * len(samples) + 1.0)
    axes = fig.subplots(len(samples), len(titles), squeeze=False)
    for r, sample in enumerate(samples):
        row = axes[r]
        rgba, _ = composite(sample.image, sample.wavelengths, mode="false")
        panels = [rgba, colorize(sample.label, palette), *(colorize(sample.predictions[m], palette) for m in methods)]
        if routed:
            assert num_experts is not None
            panels.append(_routing_rgba(sample, num_experts, rgba))
        for c, panel in enumerate(panels):
            _panel(row[c], panel, titles[c] if r == 0 else None)
        row[0].set_ylabel(sample.title, fontsize=8)
    add_legend(axes[0][-1], list(classes), palette, title="classes")
    fig.suptitle(f"spectralmoe demo — {SYNTHETIC_BANNER}\none tile per domain; trained on {source} only", fontsize=9)
    return fig


def routing_figure(samples: list[Sample], num_experts: int | None, routing_layer: int | None) -> Any:
    """``routing.png``: SpectralMoE's top-1 visual expert per patch over each sample, titled by domain."""
    from spectralmoe.viz import add_legend, composite, routing_palette

    fig = _figure(2.2 * len(samples) + 1.4, 2.9)
    axes = fig.subplots(1, len(samples), squeeze=False)[0]
    routed = num_experts is not None and all(s.routing is not None for s in samples)
    for ax, sample in zip(axes, samples):
        rgba, _ = composite(sample.image, sample.wavelengths, mode="false")
        _panel(ax, _routing_rgba(sample, num_experts, rgba) if routed else rgba, sample.title)  # type: ignore[arg-type]
    if routed:
        assert num_experts is not None
        add_legend(axes[-1], [f"expert {e}" for e in range(num_experts)], routing_palette(num_experts),
                   title="top-1 expert")  # fmt: skip
        title = (f"SpectralMoE visual-router top-1 expert per 16×16 patch, layer {routing_layer} (0-based) — "
                 f"{SYNTHETIC_BANNER}")
    else:
        title = f"SpectralMoE was not run: no routing map — {SYNTHETIC_BANNER}"
    fig.suptitle(title, fontsize=8)
    return fig


def miou_figure(results: dict[str, MethodResult], source: str) -> Any:
    """``miou.png``: mIoU per domain and method, bar = seed mean, line = ± std, dots = seeds."""
    places = [SOURCE_PLACE, *next(iter(results.values())).targets]
    fig = _figure(1.2 * len(places) + 3.0, 3.4)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(results))
    for k, (method, result) in enumerate(results.items()):
        x = np.arange(len(places)) + (k - (len(results) - 1) / 2) * width
        means = [result.mean(p) for p in places]
        stds = [0.0 if math.isnan(result.std(p)) else result.std(p) for p in places]
        ax.bar(x, means, width, yerr=stds, capsize=2, label=label_of(method))
        for xi, place in zip(x, places):
            values = result.values(place)
            ax.plot([xi + width / 4] * len(values), values, "o", markersize=3.5, markerfacecolor="white",
                    markeredgecolor="black", markeredgewidth=0.8, zorder=3)  # beside the error bar, not under it
    ax.set_xticks(np.arange(len(places)), [f"{source}\n(source, held out)", *places[1:]], fontsize=7)
    seeds = len(next(iter(results.values())).runs)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"mIoU per domain: mean ± std over {seeds} seed(s), dots = seeds — {SYNTHETIC_BANNER}", fontsize=8)
    return fig


def write_figures(
    samples: list[Sample], methods: Sequence[str], results: dict[str, MethodResult], classes: Sequence[str],
    palette: Sequence[Sequence[int]], num_experts: int | None, routing_layer: int | None, folder: Path,
    source: str,
) -> list[Path]:  # fmt: skip
    """samples.png, routing.png, miou.png in ``folder``."""
    from spectralmoe.viz import save_figure

    seed = next(iter(results.values())).runs[0].seed
    return [
        save_figure(samples_figure(samples, methods, classes, palette, num_experts, routing_layer, source, seed),
                    folder / "samples.png"),  # fmt: skip
        save_figure(routing_figure(samples, num_experts, routing_layer), folder / "routing.png"),
        save_figure(miou_figure(results, source), folder / "miou.png"),
    ]


# ------------------------------------------------------------------------------------------ metrics
def method_record(result: MethodResult) -> dict[str, Any]:
    """``metrics.json`` entry of a method: every run and the mean / std over seeds."""
    places = [SOURCE_PLACE, MEAN_PLACE, "drop", *result.targets]

    def summary(stat: str) -> dict[str, Any]:
        pick = result.mean if stat == "mean" else result.std
        record = {"source_holdout": {k: pick(SOURCE_PLACE, k) for k in ("mIoU", "mAcc")},
                  "mean_target": {k: pick(MEAN_PLACE, k) for k in ("mIoU", "mAcc")},
                  "drop": {k: pick("drop", k) for k in ("mIoU", "mAcc")},
                  "targets": {d: {k: pick(d, k) for k in ("mIoU", "mAcc")} for d in result.targets}}  # fmt: skip
        return record

    assert places
    return {
        "seeds": result.seeds,
        "mean": summary("mean"),
        "std": summary("std"),
        "runs": [{"seed": run.seed, "source_holdout": run.source, "targets": run.targets,
                  "mean_target": run.mean_target, "drop": run.drop, "train_seconds": run.train_seconds,
                  "eval_seconds": run.eval_seconds} for run in result.runs],  # fmt: skip
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "trainable_parameters": result.trainable_parameters,
        "method_parameters": result.method_parameters,
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------- report
def _relative(path: str | Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _weights_lines(provenance: dict[str, Any]) -> list[str]:
    lines = []
    for name, record in provenance.items():
        if "error" in record:
            lines.append(f"* `{name}`: provenance unavailable ({record['error']})")
            continue
        sha = record.get("sha256", {}).get("model.safetensors", "?")
        measured = record.get("measurements", {})
        probe = measured.get("domain_probe")
        height = measured.get("height_correlation")
        what = ""
        if probe and "min_gap" in probe:
            what = (f"; ridge probe on its frozen patch tokens minus the raw-pixel probe (patch accuracy), smallest over "
                    f"the demo's domains: {probe['min_gap']:+.3f} (target ≥ {probe.get('margin', float('nan')):+.2f})")
        if height and "pearson_mean" in height:
            kind = "heights above the ground" if height.get("heights") == "above_ground" else "heights"
            what = (f"; mean per-tile Pearson r with the true {kind} {height['pearson_mean']:.3f} "
                    f"(target ≥ {height.get('target', float('nan')):.1f})")  # fmt: skip
            surface = measured.get("height_correlation_surface")
            if surface:
                what += f", with the whole surface (terrain included) {surface['pearson_mean']:.3f}"
        lines.append(f"* `{name}`: `{record.get('command', '?')}` (seed {record.get('seed', '?')}){what}; "
                     f"model.safetensors SHA-256 `{sha}`")  # fmt: skip
    return lines


def write_report(result: Any, world_parameters: dict[str, Any], command: str, machine: dict[str, Any],
                 provenance: dict[str, Any], versions: dict[str, str]) -> None:  # fmt: skip
    """``report.md`` of a ``DemoResult``."""
    config = result.config
    out = result.out
    results = result.methods
    source = "/".join(_source_of(result))
    targets = next(iter(results.values())).targets
    target_list = ", ".join(f"`{d}`" for d in targets)
    gsds = ", ".join(f"{k} {v:g} m" for k, v in world_parameters.get("gsd_m", {}).items())
    head = f"`{config.head}` head" + (f" ({config.head_channels} channels)" if config.head == "fpn" else "")
    seeds = config.training_seeds
    grid = config.tile_size // 16
    lines = [
        "# spectralmoe demo — **SYNTHETIC DATA**",
        "",
        "> **SYNTHETIC.** Every image, label, map and number here comes from the package's own synthetic world "
        "(`spectralmoe.data.synthetic`) and from small models pretrained on it (`spectralmoe/weights/`). It exercises "
        "the real pipeline and compares methods at small scale. **Nothing here says anything about real imagery** or "
        "about the paper's benchmarks.",
        "",
        "## Experiment",
        "",
        f"* **Task:** train on `{source}` only, test on the unseen domains {target_list} (other regions and other "
        f"sensors with the same NIR,R,G,B bands), and on {config.holdout_tiles} held-out `{source}` tiles drawn with "
        f"another seed (the *source* column).",
        f"* **World:** {config.tiles_per_domain} tiles of {config.tile_size}×{config.tile_size} px per domain "
        f"({grid}×{grid} tokens at patch 16) at each sensor's GSD ({gsds}); 7 classes; world seed {config.seed} "
        f"(the same for every run).",
        "* **Frozen models:** backbone `synthetic-dinov2` (NIR,R,G,B), depth model `synthetic-depth-anything` "
        "(SpectralMoE only), both pretrained on another synthetic world (seed 1000 + its seed), never on a tile or label "
        "of this demo. The backbone learnt, in every sensor and region, to predict the world's materials, heights and "
        "*surface types* — which refine these 7 classes (crop growth stages, roof materials, …): a frozen model aligned "
        "with the task, as a real foundation model's pretraining data are. Measurements below.",
        f"* **Methods:** {', '.join(label_of(m) for m in results)} (SpectralMoE: paper variant, paper defaults), each "
        f"with a {head}; {config.steps} AdamW steps of batch {config.batch_size}, lr {config.lr:g}, poly decay.",
        f"* **Seeds:** {len(seeds)} per method ({', '.join(map(str, seeds))}): weight initialisation and data order "
        "change, the world does not.",
        f"* **Metrics:** mIoU / mAcc in percent over the 7 classes, whole-tile inference; a cell is the mean ± sample "
        f"standard deviation over the seeds; *mean target* is the mean over the {len(targets)} target domains; "
        "*drop* = source − mean target (percentage points).",
        "",
        f"## Results: mIoU (%), mean ± std over {len(seeds)} seed(s)",
        "",
        result.table("mIoU"),
        "",
        f"## Results: mAcc (%), mean ± std over {len(seeds)} seed(s)",
        "",
        result.table("mAcc"),
        "",
        "## Every run (mIoU %)",
        "",
        seed_table(results),
        "",
        "## What the seeds say",
        "",
        "A difference *exceeds the seed spread* when the two methods' seed ranges do not overlap (every seed of one "
        "above every seed of the other). Differences within the spread are not results of this demo.",
        "",
        *comparison_sentences(result.comparisons("mIoU"), seeds=len(seeds)),
        "",
    ]
    lines += _scene_lines(result, config, out)
    lines += _time_lines(result, machine)
    lines += [
        "## Figures",
        "",
        f"One tile per domain (false-colour composite, ground truth, each method's prediction with seed {seeds[0]}, "
        "SpectralMoE's routing):",
        "",
        "![samples](figures/samples.png)",
        "",
        "SpectralMoE's visual router, top-1 expert per 16×16 patch:",
        "",
        "![routing](figures/routing.png)",
        "",
        "![mIoU per domain](figures/miou.png)",
        "",
        "## Reproduce",
        "",
        "```sh",
        "make demo                       # set-up included; writes demo-report/",
        command,
        "python scripts/pretrain_synthetic.py --out spectralmoe/weights --seed 0           # the packaged weights",
        "python scripts/pretrain_synthetic.py --out spectralmoe/weights --seed 0 --measure # their measurements",
        "```",
        "",
        f"Per-run logs and metrics JSON/CSV: `runs/<method>/seed<k>/`; exported models: `runs/<method>/seed{seeds[0]}/"
        f"export/`. World cache: `{result.world}`.",
        "",
        "## Pretrained weights (SYNTHETIC)",
        "",
        *_weights_lines(provenance),
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}.",
        "",
    ]
    result.report.write_text("\n".join(lines), encoding="utf-8")


def _source_of(result: Any) -> tuple[str, str]:
    from spectralmoe.demo import SOURCE

    return SOURCE


def _scene_lines(result: Any, config: Any, out: Path) -> list[str]:
    scene = result.scene
    if scene is None:
        return ["## A mapped scene", "", "Not run (`--scene-size 0`).", ""]
    best = scene.maps.get(scene.best, {})
    extent = scene.size * scene.gsd_m / 1000.0
    lines = [
        "## A mapped scene",
        "",
        f"One larger scene of the target domain `{scene.sensor}/{scene.region}`: {scene.size}×{scene.size} px at "
        f"{scene.gsd_m:g} m ({extent:.1f} km × {extent:.1f} km of new ground, EPSG:32650), written as a GeoTIFF with "
        f"its ground truth (`{scene.image}`, `{scene.label}`), mapped by `spectralmoe.predict.predict_scene` (tile "
        f"{config.scene_tile}, overlap {config.scene_overlap}, raised-cosine blending).",
        "",
        "| model | overall accuracy (%) | mIoU (%) | tiles | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, record in scene.maps.items():
        role = "best mean target mIoU" if method == scene.best else "for its routing map"
        lines.append(f"| {label_of(method)} (seed {config.seed}; {role}) | {_fmt(record['overall_accuracy'])} | "
                     f"{_fmt(record['mIoU'])} | {record['tiles']} | {record['seconds']:.0f} |")  # fmt: skip
    lines += ["", "Accuracy over every pixel of the scene against its ground truth.", "",
              f"![scene: composite, {label_of(scene.best)}'s map, ground truth, errors](figures/scene.png)", "",
              "![scene confusion matrix](figures/scene_confusion.png)", ""]  # fmt: skip
    routed = next((r for r in scene.maps.values() if r.get("routing_figure")), None)
    if routed:
        lines += ["SpectralMoE's visual router on the scene, top-1 expert per patch at its last layer:", "",
                  "![scene routing](figures/scene_routing.png)", ""]  # fmt: skip
    lines += [f"The map GeoTIFF (`{_relative(best.get('map'), out)}`, class colours and names inside) and its "
              f"preview:", "", f"![map preview]({_relative(best.get('preview'), out)})", "", "```sh",
              f"spectralmoe predict-scene --checkpoint {best.get('checkpoint', '?')} "
              f"--input {scene.image} --output map.tif --sensor {scene.sensor} --tile {config.scene_tile} "
              f"--overlap {config.scene_overlap}",
              f"spectralmoe viz --prediction map.tif --ground-truth {scene.label} --image {scene.image} "
              f"--sensor {scene.sensor} --output scene.png", "```", ""]  # fmt: skip
    return lines


def _time_lines(result: Any, machine: dict[str, Any]) -> list[str]:
    seconds = result.seconds
    scene = result.scene
    lines = [
        "## Run times",
        "",
        f"CPU: {machine['workers']} process(es) of {machine['threads_per_worker']} torch thread each, "
        f"{machine['cpus']} logical cores visible. Load average (1, 5, 15 min) when the demo started: "
        f"{', '.join(f'{v:.1f}' for v in machine['load_start'])} (about 0 on an idle machine; what ran just before, e.g. "
        f"the set-up, counts too); at the end: {', '.join(f'{v:.1f}' for v in machine['load_end'])} (the demo's own "
        f"{machine['workers']} busy processes count {machine['workers']})"
        + (" — **other work shared the machine: times are longer than on an idle one.**"
           if machine["load_start"][0] > 1.0 or machine["load_end"][0] > machine["workers"] + 0.5 else ".")
        + "",
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| world generation (≈0 when cached) | {seconds.get('world', 0.0):.1f} |",
    ]
    if scene is not None:
        lines.append(f"| scene rendering (≈0 when cached) | {seconds.get('scene_render', 0.0):.1f} |")
    lines.append(f"| training and testing every run ({machine['workers']} run(s) side by side), wall time | "
                 f"{seconds.get('train_and_test_wall', 0.0):.1f} |")  # fmt: skip
    for method, r in result.methods.items():
        lines.append(f"| — {label_of(method)}: train, {len(r.runs)} seed(s), summed over runs | {r.train_seconds:.1f} |")
        lines.append(f"| — {label_of(method)}: test (targets + held-out source), {len(r.runs)} seed(s), summed | "
                     f"{r.eval_seconds:.1f} |")  # fmt: skip
    if scene is not None:
        lines.append(f"| scene mapping and its figures | {seconds.get('scene_map', 0.0):.1f} |")
    lines += [f"| figures and report | {seconds.get('report', 0.0):.1f} |",
              f"| **total of `spectralmoe demo`** | **{seconds.get('total', 0.0):.1f}** |"]  # fmt: skip
    if "since_start" in seconds:
        lines.append(f"| **since `make demo` started (set-up included)** | **{seconds['since_start']:.1f}** |")
    lines.append("")
    return lines
