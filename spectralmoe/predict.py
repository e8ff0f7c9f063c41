"""Scene-scale inference: a whole GeoTIFF in, a georeferenced class map out.

A mapping job ends with a map that a GIS opens in the right place. ``predict_scene`` runs a trained
model over a raster of any size with overlapping tiles, blends the tiles' class probabilities with a
smooth weight window, and writes a single-band ``uint8`` GeoTIFF of class indices on the input's
grid (CRS, transform, size), with nodata, a colour table and the class names, plus a PNG preview.

How memory stays bounded (independent of the scene's height, linear in its width):

* Tiles of ``tile × tile`` pixels start every ``tile − overlap`` pixels, the last row/column flush
  with the scene's edge; a scene smaller than a tile is mirrored (symmetric padding) up to the tile
  size, so a border tile sees plausible content, never zeros.
* Tiles are read window by window with rasterio (only the model's bands, in the model's order) and
  run in batches of ``batch_size``; pixels that are nodata in every band or NaN in any band are
  filled with the model's band means before the model and marked nodata (255) in the output.
* Each tile's probabilities, times a separable raised-cosine window with a floor (tile borders
  count a little, centres most), are added into accumulators that cover one horizontal strip of the
  scene: ``tile + 256`` rows × the scene width. As soon as tile rows have moved past a 256-row block
  row, its pixels are final: they are divided by the summed weights, arg-maxed, written to the output
  by windows (whole 256 × 256 blocks, so the compressed GeoTIFF is written once, never rewritten) and
  the strip slides down.

Memory bound: ``(4·K + 5)·(tile + 256)·width`` bytes of strip buffers for K classes (float32
accumulators and weights, the nodata mask; +5 bytes a pixel with a routing map), ``4·K·256·width``
bytes while a block row is written, one batch of tiles through the model, and GDAL's block cache
(``gdal_cache_mb``, default ``GDAL_CACHE_MB``). It grows with the scene's width, never its height.
Measured with ``benchmarks/scene_memory.py`` (tiny 4-class model, tile 512, batch 4, CPU): a
20,000 × 20,000 × 4-band uint16 scene peaks at 1.32 GB resident — 0.53 GB of it is Python, torch and
the model before the scene is touched, 0.30 GB one batch of activations — and a 2,000 × 20,000 scene
(a tenth of the pixels, same width) at 1.26 GB.

Every file is written under a temporary name in the output's folder and renamed when everything
succeeded, so an error (or Ctrl-C) leaves no half-written map behind. Band problems (a missing band,
a different band count) are raised before the model is built and before any file is created.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch

from spectralmoe.bands import DEFAULT_RGB_TOLERANCE_UM, as_wavelength_list, get_sensor, wavelength_distance
from spectralmoe.data.prefetch import BackgroundReader
from spectralmoe.viz import CLASS_NAMES_TAG, NODATA_CLASS, default_palette, routing_palette, write_preview

__all__ = [
    "BLOCK_SIZE",
    "BandMismatchError",
    "GDAL_CACHE_MB",
    "ModelSource",
    "PredictionSummary",
    "add_predict_scene_parser",
    "blend_window",
    "match_bands",
    "predict_scene",
    "resolve_checkpoint",
    "tile_starts",
]

#: Output GeoTIFF block size (pixels); strips are flushed in whole block rows.
BLOCK_SIZE = 256
#: GDAL block cache while reading/writing (MB); part of the memory bound.
GDAL_CACHE_MB = 64
#: Weight of a tile's border pixels relative to its centre in the blending window.
WINDOW_FLOOR = 0.05
#: How far (µm) an input band's centre wavelength may be from a model band's to stand in for it.
BAND_TOLERANCE_UM = DEFAULT_RGB_TOLERANCE_UM

PathLike = str | os.PathLike[str]
Precision = Literal["fp32", "bf16"]


class BandMismatchError(ValueError):
    """The input's bands cannot be matched to the bands the model was trained on."""


# ------------------------------------------------------------------------------------ the model
@dataclass
class ModelSource:
    """What a checkpoint says about its model, read without building it (so band checks come first).

    ``kind`` is ``"export"`` (folder with ``spectralmoe.json``), ``"ckpt"`` (trainable-only Lightning
    checkpoint) or ``"model"`` (a ``Segmentor`` already in memory)."""

    kind: Literal["export", "ckpt", "model"]
    path: Path | None
    wavelengths: list[float]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    num_classes: int
    adapter: str | None
    value_scale: float | None
    model: Any = None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "in-memory model"

    def load(self, *, backbone_weights: str | None, depth_weights: str | None, pretrained: bool) -> Any:
        """Build the Segmentor (frozen parts from their weights, trainable tensors from the checkpoint)."""
        if self.kind == "model":
            return self.model
        if self.kind == "export":
            from spectralmoe.engine.export import load_exported

            return load_exported(self.path, backbone_weights=backbone_weights, depth_weights=depth_weights,
                                 pretrained=pretrained, map_location="cpu")  # fmt: skip
        from spectralmoe.engine.task import SegmentationTask

        overrides: dict[str, Any] = {"pretrained": pretrained}
        if backbone_weights is not None:
            overrides["backbone_weights"] = backbone_weights
        if depth_weights is not None:
            overrides["depth_weights"] = depth_weights
        task = SegmentationTask.load_from_checkpoint(self.path, map_location="cpu", weights_only=True, **overrides)
        task.configure_model()
        return task.segmentor


def _palette_or_default(palette: Any, count: int) -> list[tuple[int, int, int]]:
    if palette is None:
        return default_palette(count)
    colours = [tuple(int(c) for c in colour[:3]) for colour in palette]
    if len(colours) != count:
        raise ValueError(f"{len(colours)} palette colours for {count} classes")
    return colours  # type: ignore[return-value]


def resolve_checkpoint(checkpoint: PathLike | Any) -> ModelSource:
    """Accept an export folder, a Lightning run folder holding ``export/`` (or ``export_best/``), a
    ``.ckpt`` file, or a ``Segmentor``; return what it says about its model without building it."""
    from spectralmoe.engine.export import CONFIG_FILE, read_export_config
    from spectralmoe.models.factory import resolve_wavelengths
    from spectralmoe.models.segmentor import Segmentor

    if isinstance(checkpoint, Segmentor):
        count = int(getattr(checkpoint.head, "num_classes"))
        adapter = "spectralmoe" if _is_spectralmoe(checkpoint.adapter) else type(checkpoint.adapter).__name__.lower()
        return ModelSource("model", None, [float(w) for w in checkpoint.wavelengths.tolist()],
                           [f"class{i}" for i in range(count)], default_palette(count), count, adapter,
                           float(checkpoint.value_scale), checkpoint)  # fmt: skip
    path = Path(checkpoint)
    if path.is_dir():
        folder = next((f for f in (path, path / "export", path / "export_best") if (f / CONFIG_FILE).is_file()), None)
        if folder is None:
            raise FileNotFoundError(
                f"{path}: not a spectralmoe export (no {CONFIG_FILE}) and no run folder holding export/{CONFIG_FILE} "
                f"or export_best/{CONFIG_FILE}"
            )
        info = read_export_config(folder)
        build = info["build"]
        waves, scale = resolve_wavelengths(build.get("sensor"), build.get("wavelengths"))
        count = int(build["num_classes"])
        names = list(info.get("classes") or [f"class{i}" for i in range(count)])
        value_scale = build.get("value_scale")
        palette = _palette_or_default(info.get("palette"), count)
        return ModelSource("export", folder, waves, names, palette, count, build.get("adapter", "spectralmoe"),
                           float(value_scale if value_scale else scale))
    if path.is_file() and path.suffix == ".ckpt":
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure: name the file
            raise ValueError(f"{path}: unreadable Lightning checkpoint ({error})") from error
        hp = stored.get("hyper_parameters") if isinstance(stored, dict) else None
        if not isinstance(hp, dict) or hp.get("num_classes") is None:
            raise ValueError(f"{path}: not a SegmentationTask checkpoint (no hyper_parameters with num_classes)")
        waves, scale = resolve_wavelengths(None, hp.get("wavelengths"))
        count = int(hp["num_classes"])
        names = list(hp.get("class_names") or [f"class{i}" for i in range(count)])
        value_scale = hp.get("value_scale")
        return ModelSource("ckpt", path, waves, names, _palette_or_default(hp.get("palette"), count), count,
                           hp.get("adapter", "spectralmoe"), float(value_scale if value_scale else scale))  # fmt: skip
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint (export folder, run folder or .ckpt file)")
    raise ValueError(f"{path}: a checkpoint must be an export folder, a run folder holding export/, or a .ckpt file")


def _is_spectralmoe(adapter: Any) -> bool:
    from spectralmoe.models.adapters.spectralmoe import SpectralMoE

    return isinstance(adapter, SpectralMoE)


# ------------------------------------------------------------------------------------ the bands
def match_bands(
    model_wavelengths: Sequence[float],
    input_count: int,
    *,
    sensor: str | None = None,
    wavelengths: Sequence[float] | None = None,
    tolerance_um: float = BAND_TOLERANCE_UM,
    where: str = "input",
) -> list[int]:
    """0-based input bands to feed the model, in the model's band order.

    Without ``sensor``/``wavelengths`` the input must have exactly the model's band count (taken in
    file order). With them, each model band takes the input band nearest in wavelength, within
    ``tolerance_um``; non-spectral bands (wavelength ``nan``, e.g. elevation) pair up in order. An
    input band may feed one model band only. Raises ``BandMismatchError`` naming the band."""
    model = as_wavelength_list(model_wavelengths)
    if sensor is not None and wavelengths is not None:
        raise ValueError("describe the input with either a sensor or wavelengths, not both")
    if sensor is None and wavelengths is None:
        if input_count != len(model):
            raise BandMismatchError(
                f"{where} has {input_count} band(s) but the model was trained on {len(model)} "
                f"(wavelengths {model} µm); pass --sensor/--wavelengths to select or reorder bands by wavelength"
            )
        return list(range(input_count))
    source = f"sensor {sensor!r}" if sensor is not None else "the given wavelengths"
    given = list(get_sensor(sensor).wavelengths_um) if sensor is not None else as_wavelength_list(wavelengths or [])
    if len(given) != input_count:
        raise BandMismatchError(f"{where} has {input_count} band(s) but {source} describes {len(given)}: {given} µm")
    spectral = [(i, w) for i, w in enumerate(given) if not math.isnan(w)]
    other = [i for i, w in enumerate(given) if math.isnan(w)]
    chosen: list[int] = []
    for j, target in enumerate(model):
        if math.isnan(target):
            rank = sum(math.isnan(w) for w in model[:j])
            if rank >= len(other):
                raise BandMismatchError(
                    f"{where}: model band {j} is non-spectral (no wavelength) and {source} has no such band left"
                )
            chosen.append(other[rank])
            continue
        if not spectral:
            raise BandMismatchError(f"{where}: {source} has no spectral band for model band {j} at {target:.3f} µm")
        index, wave = min(spectral, key=lambda iw: (wavelength_distance(iw[1], target), iw[0]))
        if abs(wave - target) > tolerance_um:
            raise BandMismatchError(
                f"{where}: the model's band {j} ({target:.3f} µm) is missing — the nearest input band is band "
                f"{index + 1} at {wave:.3f} µm, {abs(wave - target) * 1000:.0f} nm away (tolerance "
                f"{tolerance_um * 1000:.0f} nm; input {source}: {given} µm)"
            )
        chosen.append(index)
    repeated = sorted({i for i in chosen if chosen.count(i) > 1})
    if repeated:
        feeds = {i + 1: [j for j, c in enumerate(chosen) if c == i] for i in repeated}
        raise BandMismatchError(
            f"{where}: input band(s) {list(feeds)} would each feed several model bands {feeds} "
            f"(model {model} µm, input {given} µm); the input lacks distinct bands for them"
        )
    return chosen


# ------------------------------------------------------------------------------------ the tiles
def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets every ``stride`` pixels covering ``length``, the last flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_window(size: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """``[size, size]`` float32 weights: a separable raised cosine (Hann) lifted to ``floor`` at the
    borders — tile centres, where the model sees most context, dominate; borders still count, so a
    pixel that only one tile's edge covers (scene borders) is still predicted."""
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    ramp = floor + (1.0 - floor) * np.sin(np.pi * centres) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


@dataclass(frozen=True)
class _Tile:
    top: int
    left: int
    height: int
    width: int


def _plan(height: int, width: int, tile: int, overlap: int) -> list[_Tile]:
    """Row-major tiles (the strip logic relies on tops never decreasing)."""
    stride = tile - overlap
    return [
        _Tile(top, left, min(tile, height - top), min(tile, width - left))
        for top in tile_starts(height, tile, stride)
        for left in tile_starts(width, tile, stride)
    ]


# ----------------------------------------------------------------------------------- the output
@dataclass
class PredictionSummary:
    """What ``predict_scene`` did and wrote."""

    output: Path
    preview: Path | None
    probabilities: Path | None
    routing: Path | None
    checkpoint: str
    height: int
    width: int
    bands_used: list[int]
    tiles: int
    tiles_skipped: int
    class_names: list[str]
    class_pixels: dict[str, int]
    nodata_pixels: int
    seconds: float
    tile_seconds: float
    device: str
    precision: str
    routing_layer: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def tiles_per_second(self) -> float:
        """Throughput of the tile loop (reading, model, blending, writing; model loading excluded)."""
        return self.tiles / self.tile_seconds if self.tile_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready facts (paths as strings)."""
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        data["tiles_per_second"] = round(self.tiles_per_second, 3)
        data["seconds"] = round(self.seconds, 3)
        data["tile_seconds"] = round(self.tile_seconds, 3)
        return data


def _temporary(path: Path, stack: list[Path]) -> Path:
    """A fresh temporary sibling of ``path``, remembered in ``stack`` for clean-up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    stack.append(Path(name))
    return Path(name)


def _profile(src: Any, count: int, dtype: str, nodata: float) -> dict[str, Any]:
    block = BLOCK_SIZE
    return {
        "driver": "GTiff", "height": src.height, "width": src.width, "count": count, "dtype": dtype,
        "crs": src.crs, "transform": src.transform, "nodata": nodata, "tiled": True,
        "blockxsize": block, "blockysize": block, "compress": "deflate", "BIGTIFF": "IF_SAFER",
        "interleave": "band",
        **({"predictor": 3} if dtype == "float32" else {}),
    }  # fmt: skip


class _BlockRowWriter:
    """Writes consecutive final rows to every output dataset at once; the caller hands whole block rows
    (all but the last), so each compressed block is written exactly once."""

    def __init__(self, outputs: dict[str, Any], width: int) -> None:
        self.outputs = outputs
        self.width = width
        self.row = 0

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        from rasterio.windows import Window

        rows = next(iter(arrays.values())).shape[-2]
        window = Window(0, self.row, self.width, rows)
        for name, array in arrays.items():
            self.outputs[name].write(array if array.ndim == 3 else array[None], window=window)
        self.row += rows


# ---------------------------------------------------------------------------------- the scene
def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_probabilities(scores: torch.Tensor, head: Any) -> torch.Tensor:
    """Per-class probabilities from a head's ``logits`` output: softmax of dense heads' logits;
    Mask2Former's semantic scores are non-negative sums of mask probabilities, so they are normalised
    to sum to one instead (argmax unchanged)."""
    from spectralmoe.models.heads.mask2former import Mask2FormerHead

    scores = scores.float()
    if isinstance(head, Mask2FormerHead):
        return scores / scores.sum(1, keepdim=True).clamp_min(1e-6)
    return scores.softmax(1)


def _device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available on this machine (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    return device


def _check_paths(input_path: Path, outputs: dict[str, Path]) -> None:
    seen: dict[Path, str] = {input_path.resolve(): "input"}
    for name, path in outputs.items():
        key = path.resolve()
        if key in seen:
            raise ValueError(f"{name} path {path} is the same file as the {seen[key]} path")
        seen[key] = name


def _inspect_input(path: Path) -> dict[str, Any]:
    """Header facts of the input raster (count, size, CRS, transform, nodata), no pixel read."""
    import rasterio

    from spectralmoe.data.io import open_raw, raster_shape

    raster_shape(path)  # a missing / unreadable file fails here, with its name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), open_raw(path, rasterio) as src:
            return {"count": src.count, "height": src.height, "width": src.width, "dtype": src.dtypes[0],
                    "crs": src.crs, "transform": src.transform, "nodata": src.nodata}  # fmt: skip


def predict_scene(
    checkpoint: PathLike | Any,
    input: PathLike,  # noqa: A002 - the CLI's --input
    output: PathLike,
    *,
    sensor: str | None = None,
    wavelengths: Sequence[float] | None = None,
    tile: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    probabilities: PathLike | None = None,
    routing: PathLike | None = None,
    routing_layer: int = -1,
    preview: bool = True,
    overviews: bool = True,
    backbone_weights: str | None = None,
    depth_weights: str | None = None,
    pretrained: bool = True,
    progress: bool = True,
    band_tolerance_um: float = BAND_TOLERANCE_UM,
    gdal_cache_mb: int = GDAL_CACHE_MB,
    read_ahead: int = 2,
) -> PredictionSummary:
    """Segment a whole raster and write a georeferenced class map (see the module docstring for the
    tiling, blending and the memory bound).

    Args:
        checkpoint: export folder (``spectralmoe.json`` + ``model.safetensors``), a Lightning run folder
            holding ``export/`` (or ``export_best/``), a trainable-only ``.ckpt``, or a ``Segmentor``.
        input: raster in raw sensor units (any size, any dtype GDAL reads).
        output: class map GeoTIFF: ``uint8`` class indices, 255 = nodata, the input's CRS / transform /
            size, colour table = the palette, class names in the ``CLASS_NAMES`` tag, tiled 256 × 256,
            deflate, internal overviews (``overviews=True``).
        sensor, wavelengths: describe the input's bands so they are matched to the model's by
            wavelength (selected / reordered); without them the band count must equal the model's.
        tile, overlap: tile size and overlap in pixels (stride ``tile − overlap``).
        batch_size: tiles per forward pass.
        device, precision: ``"cpu"`` / ``"cuda"``; ``"bf16"`` runs the model under bfloat16 autocast
            (blending stays float32).
        probabilities: optional path of a float32 raster of per-class probabilities (one band per class,
            NaN at nodata).
        routing, routing_layer: optional path of a ``uint8`` raster of the SpectralMoE visual router's
            top-1 expert per patch at layer ``routing_layer`` (negative counts from the end), each pixel
            taken from the tile whose window weights it most (255 at nodata).
        preview: write ``<output>.png`` next to the map: decimated colour map with a legend.
        overviews: build internal overviews (nearest) of the class map (fast previews, GIS zoom-out).
        backbone_weights, depth_weights, pretrained: where the frozen models' weights come from
            (``pretrained=False``: random, for tests).
        progress: a tqdm bar over tiles on stderr.
        band_tolerance_um: how far an input band may be from a model band's wavelength.
        gdal_cache_mb: GDAL's block cache while reading the input and writing the outputs (part of the
            memory bound; larger only helps inputs with blocks much taller than the tile overlap).
        read_ahead: batches of tiles read ahead by a background thread while the model runs (0: read
            in turn); each costs one batch of float32 tiles in memory.

    Returns:
        A ``PredictionSummary``.

    Raises:
        BandMismatchError: bands cannot be matched (before the model is built or any file created).
        ValueError / FileNotFoundError: bad arguments or files, each naming the culprit.
    """
    started = time.perf_counter()
    input_path, output = Path(input), Path(output)
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if read_ahead < 0:
        raise ValueError(f"read_ahead must be >= 0, got {read_ahead}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    targets = {"output": output}
    if probabilities is not None:
        targets["probabilities"] = Path(probabilities)
    if routing is not None:
        targets["routing"] = Path(routing)
    if preview:
        targets["preview"] = output.with_suffix(".png")
    _check_paths(input_path, targets)
    run_device = _device(device)

    source = resolve_checkpoint(checkpoint)
    facts = _inspect_input(input_path)
    where = f"{input_path} (shape {facts['count']}x{facts['height']}x{facts['width']}, {facts['dtype']})"
    bands = match_bands(source.wavelengths, facts["count"], sensor=sensor, wavelengths=wavelengths,
                        tolerance_um=band_tolerance_um, where=where)  # fmt: skip
    notes: list[str] = []
    if sensor is not None and source.value_scale is not None:
        scale = get_sensor(sensor).value_scale
        if not math.isclose(scale, source.value_scale, rel_tol=1e-6):
            notes.append(f"sensor {sensor!r} has value scale {scale:g} but the model was trained on data of "
                         f"value scale {source.value_scale:g}: raw values are fed unchanged")  # fmt: skip
            warnings.warn(notes[-1], stacklevel=2)
    if source.num_classes > NODATA_CLASS:
        raise ValueError(f"{source.describe()}: {source.num_classes} classes do not fit a uint8 map with nodata 255")
    if routing is not None and source.adapter != "spectralmoe":
        raise ValueError(f"routing maps need a SpectralMoE model; {source.describe()} uses adapter {source.adapter!r}")

    model = source.load(backbone_weights=backbone_weights, depth_weights=depth_weights, pretrained=pretrained)
    model = model.to(run_device).eval()
    if model.num_bands != len(bands):
        raise BandMismatchError(f"{where}: the model expects {model.num_bands} bands, {len(bands)} were matched")
    layer = None
    if routing is not None:
        if not _is_spectralmoe(model.adapter):
            raise ValueError(f"routing maps need a SpectralMoE adapter, got {type(model.adapter).__name__}")
        layers = model.adapter.num_layers
        layer = routing_layer + layers if routing_layer < 0 else routing_layer
        if not 0 <= layer < layers:
            raise ValueError(f"routing_layer {routing_layer} out of range for {layers} adapted layers")

    summary_counts, skipped, nodata_pixels, tiles, tile_seconds = _run(
        model, source, input_path, targets, bands, tile=tile, overlap=overlap, batch_size=batch_size,
        device=run_device, precision=precision, routing_layer=layer, overviews=overviews, progress=progress,
        gdal_cache_mb=gdal_cache_mb, read_ahead=read_ahead,
        provenance={"checkpoint": source.describe(), "input": str(input_path), "tile": tile, "overlap": overlap,
                    "bands_used": [b + 1 for b in bands], "precision": precision},
    )  # fmt: skip
    return PredictionSummary(
        output=output, preview=targets.get("preview"), probabilities=targets.get("probabilities"),
        routing=targets.get("routing"), checkpoint=source.describe(), height=facts["height"], width=facts["width"],
        bands_used=bands, tiles=tiles, tiles_skipped=skipped, class_names=list(source.class_names),
        class_pixels={n: int(c) for n, c in zip(source.class_names, summary_counts)}, nodata_pixels=nodata_pixels,
        seconds=time.perf_counter() - started, tile_seconds=tile_seconds, device=str(run_device), precision=precision,
        routing_layer=layer,
        warnings=notes,
    )  # fmt: skip


def _tile_reader(src: Any, bands: list[int], fill: np.ndarray, nodata: float | None, tile: int
                 ) -> Callable[[_Tile], tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Reads one tile: ``[C, tile, tile]`` float32 model input (invalid pixels = band means, mirrored
    up to the tile size at scene edges) and the ``[h, w]`` invalid mask of its in-scene part."""
    from rasterio.windows import Window

    indexes = [b + 1 for b in bands]

    def read(t: _Tile) -> tuple[np.ndarray, np.ndarray]:
        data = src.read(indexes, window=Window(t.left, t.top, t.width, t.height), out_dtype="float32")
        invalid = ~np.isfinite(data).all(0)
        if nodata is not None and not math.isnan(nodata):
            invalid |= (data == np.float32(nodata)).all(0)
        if invalid.any():
            data = np.where(invalid[None], fill[:, None, None], data)
        if t.height < tile or t.width < tile:
            data = np.pad(data, ((0, 0), (0, tile - t.height), (0, tile - t.width)), mode="symmetric")
        return data, invalid

    return read


def _batches(plan: list[_Tile], size: int) -> Iterator[list[_Tile]]:
    for start in range(0, len(plan), size):
        yield plan[start:start + size]


def _run(
    model: Any, source: ModelSource, input_path: Path, targets: dict[str, Path], bands: list[int], *,
    tile: int, overlap: int, batch_size: int, device: torch.device, precision: Precision,
    routing_layer: int | None, overviews: bool, progress: bool, gdal_cache_mb: int, provenance: dict[str, Any],
    read_ahead: int = 2,
) -> tuple[np.ndarray, int, int, int, float]:  # fmt: skip
    """The strip loop; returns (class pixel counts, skipped tiles, nodata pixels, tiles, loop seconds)."""
    import rasterio
    from rasterio.enums import Resampling
    from tqdm.auto import tqdm

    from spectralmoe.data.io import open_raw

    temporaries: list[Path] = []
    classes = source.num_classes
    fill = model.pixel_mean.detach().float().cpu().numpy().reshape(-1)
    window = blend_window(tile)
    adapter = model.adapter
    recording = getattr(adapter, "record_routing", None)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            stack.enter_context(rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=int(gdal_cache_mb)))
            src = stack.enter_context(open_raw(input_path, rasterio))
            height, width = src.height, src.width
            outputs: dict[str, Any] = {}
            tmp = {name: _temporary(path, temporaries) for name, path in targets.items()}
            outputs["classes"] = stack.enter_context(
                rasterio.open(tmp["output"], "w", **_profile(src, 1, "uint8", NODATA_CLASS)))
            outputs["classes"].write_colormap(1, {**{i: (*c, 255) for i, c in enumerate(source.palette)},
                                                  NODATA_CLASS: (0, 0, 0, 0)})  # fmt: skip
            outputs["classes"].set_band_description(1, "class index (255 = nodata)")
            outputs["classes"].update_tags(**{CLASS_NAMES_TAG: json.dumps(source.class_names),
                                              "NUM_CLASSES": str(classes), "NODATA_CLASS": str(NODATA_CLASS),
                                              "SPECTRALMOE": json.dumps(provenance)})  # fmt: skip
            if "probabilities" in tmp:
                outputs["probabilities"] = stack.enter_context(
                    rasterio.open(tmp["probabilities"], "w", **_profile(src, classes, "float32", float("nan"))))
                for i, name in enumerate(source.class_names, start=1):
                    outputs["probabilities"].set_band_description(i, name)
                outputs["probabilities"].update_tags(**{CLASS_NAMES_TAG: json.dumps(source.class_names)})
            if "routing" in tmp:
                experts = int(adapter.num_experts)
                outputs["routing"] = stack.enter_context(
                    rasterio.open(tmp["routing"], "w", **_profile(src, 1, "uint8", NODATA_CLASS)))
                outputs["routing"].write_colormap(1, {**{e: (*c, 255) for e, c in enumerate(routing_palette(experts))},
                                                      NODATA_CLASS: (0, 0, 0, 0)})  # fmt: skip
                outputs["routing"].set_band_description(1, f"top-1 visual expert at layer {routing_layer}")
                outputs["routing"].update_tags(ROUTING_LAYER=str(routing_layer), NUM_EXPERTS=str(experts))
                adapter.record_routing = True
            writer = _BlockRowWriter(outputs, width)

            # Strip accumulators: scene rows [strip_top, strip_top + rows).
            rows = min(height, tile + BLOCK_SIZE)
            acc = np.zeros((classes, rows, width), dtype=np.float32)
            weight = np.zeros((rows, width), dtype=np.float32)
            invalid = np.zeros((rows, width), dtype=bool)
            route = np.full((rows, width), NODATA_CLASS, dtype=np.uint8) if routing_layer is not None else None
            route_weight = np.zeros((rows, width), dtype=np.float32) if routing_layer is not None else None
            strip_top = 0
            counts = np.zeros(256, dtype=np.int64)

            def flush(until: int) -> None:
                """Write scene rows [strip_top, until) (whole block rows unless ``until`` is the end)."""
                nonlocal strip_top
                for start in range(strip_top, until, BLOCK_SIZE):
                    n = min(BLOCK_SIZE, until - start)
                    r = start - strip_top
                    bad = invalid[r:r + n]
                    probs = acc[:, r:r + n] / np.maximum(weight[r:r + n], 1e-12)
                    labels = probs.argmax(0).astype(np.uint8)
                    labels[bad] = NODATA_CLASS
                    counts[:] += np.bincount(labels.ravel(), minlength=256)
                    arrays: dict[str, np.ndarray] = {"classes": labels}
                    if "probabilities" in outputs:
                        probs[:, bad] = np.nan
                        arrays["probabilities"] = probs
                    if route is not None:
                        arrays["routing"] = np.where(bad, NODATA_CLASS, route[r:r + n])
                    writer.write(arrays)
                shift = until - strip_top
                keep = rows - shift
                for buffer, empty in ((acc, 0.0), (weight, 0.0), (invalid, False), (route, NODATA_CLASS),
                                      (route_weight, 0.0)):  # fmt: skip
                    if buffer is None:
                        continue
                    if keep > 0:
                        buffer[..., :keep, :] = buffer[..., shift:, :]
                    buffer[..., max(keep, 0):, :] = empty
                strip_top = until

            plan = _plan(height, width, tile, overlap)
            read = _tile_reader(src, bands, fill, src.nodata, tile)
            skipped = 0
            bar = tqdm(total=len(plan), unit="tile", desc=f"predict {input_path.name}", disable=not progress,
                       dynamic_ncols=True)  # fmt: skip
            stack.callback(bar.close)
            patch = int(model.backbone.patch_size)
            loop_started = time.perf_counter()
            # The next batches are read in a background thread while the model runs on this one.
            reader = BackgroundReader(_batches(plan, batch_size), lambda tiles: [read(t) for t in tiles], read_ahead)
            for batch, loaded in stack.enter_context(reader):
                live = [i for i, (_, bad) in enumerate(loaded) if not bad.all()]
                probs_np = route_np = None
                if live:
                    images = torch.from_numpy(np.stack([loaded[i][0] for i in live])).to(device)
                    with torch.inference_mode():
                        with _autocast(device, precision):
                            scores = model.predict_logits(images)
                        probs_np = _to_probabilities(scores, model.head).cpu().numpy()  # float32, outside autocast
                    if routing_layer is not None:
                        grid = -(-tile // patch)
                        experts_np = adapter.last_routing[routing_layer].view(len(live), grid, grid).cpu().numpy()
                        route_np = experts_np.repeat(patch, 1).repeat(patch, 2)[:, :tile, :tile].astype(np.uint8)
                skipped += len(batch) - len(live)
                slot = {i: k for k, i in enumerate(live)}
                for i, t in enumerate(batch):
                    # Rows above this tile's top are final once tiles have moved on: write whole block rows.
                    final = (t.top // BLOCK_SIZE) * BLOCK_SIZE
                    if final > strip_top:
                        flush(final)
                    r, h, w = t.top - strip_top, t.height, t.width
                    invalid[r:r + h, t.left:t.left + w] = loaded[i][1]
                    if i in slot:
                        k = slot[i]
                        weights = window[:h, :w]
                        acc[:, r:r + h, t.left:t.left + w] += probs_np[k, :, :h, :w] * weights
                        weight[r:r + h, t.left:t.left + w] += weights
                        if route is not None and route_weight is not None and route_np is not None:
                            better = weights > route_weight[r:r + h, t.left:t.left + w]
                            route[r:r + h, t.left:t.left + w][better] = route_np[k, :h, :w][better]
                            route_weight[r:r + h, t.left:t.left + w][better] = weights[better]
                bar.update(len(batch))
            flush(height)
            loop_seconds = time.perf_counter() - loop_started
            if overviews:
                factors = [f for f in (2, 4, 8, 16, 32, 64, 128) if max(height, width) / f >= BLOCK_SIZE / 2]
                if factors:
                    outputs["classes"].build_overviews(factors, Resampling.nearest)
                    outputs["classes"].update_tags(ns="rio_overview", resampling="nearest")
        if "preview" in tmp:
            write_preview(tmp["output"], tmp["preview"], class_names=source.class_names, palette=source.palette,
                          title=f"{input_path.name} → {targets['output'].name}")  # fmt: skip
        for name in ("probabilities", "routing", "preview", "output"):  # the map last: it exists ⇒ all exist
            if name in tmp:
                os.replace(tmp[name], targets[name])
    except BaseException:
        for path in temporaries:
            path.unlink(missing_ok=True)
        raise
    finally:
        if recording is not None:
            adapter.record_routing = recording
            adapter.last_routing = {}
    nodata_pixels = int(counts[NODATA_CLASS])
    return counts[:classes], skipped, nodata_pixels, len(plan), loop_seconds


# ------------------------------------------------------------------------------------------- CLI
def add_predict_scene_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``spectralmoe predict-scene`` (whole raster → georeferenced class map)."""
    p = subparsers.add_parser(
        "predict-scene",
        help="segment a whole raster with a trained model into a georeferenced class-map GeoTIFF",
        description="Sliding-window inference over a raster of any size (overlapping tiles blended with a smooth "
        "window, read and written by windows so memory does not grow with the scene). Writes a uint8 GeoTIFF of "
        "class indices on the input's grid (255 = nodata), with the palette as colour table and the class names "
        "as tags, a PNG preview next to it, and optionally per-class probabilities and a SpectralMoE routing map.",
    )
    p.add_argument("--checkpoint", required=True, help="export folder, run folder holding export/, or .ckpt file")
    p.add_argument("--input", required=True, type=Path, help="scene raster in raw sensor units")
    p.add_argument("--output", required=True, type=Path, help="class map GeoTIFF to write")
    bands = p.add_mutually_exclusive_group()
    bands.add_argument("--sensor", default=None, help="sensor of the input (its band wavelengths), e.g. gf2-16bit")
    bands.add_argument("--wavelengths", nargs="+", default=None, metavar="UM",
                       help="centre wavelengths (µm) of the input's bands in file order (nan = non-spectral)")
    p.add_argument("--tile", type=int, default=512, help="tile size in pixels (default 512)")
    p.add_argument("--overlap", type=int, default=128, help="overlap between tiles in pixels (default 128)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="bf16 = bfloat16 autocast (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--probabilities", type=Path, default=None, help="also write per-class probabilities (float32)")
    p.add_argument("--routing", type=Path, default=None, help="also write the SpectralMoE expert map (uint8)")
    p.add_argument("--routing-layer", type=int, default=-1, help="adapted layer of the routing map (default: last)")
    p.add_argument("--no-preview", dest="preview", action="store_false", help="do not write <output>.png")
    p.add_argument("--no-overviews", dest="overviews", action="store_false", help="do not build overviews")
    p.add_argument("--backbone-weights", default=None, help="local folder / hub id of the frozen backbone weights")
    p.add_argument("--depth-weights", default=None, help="local folder / hub id of the frozen depth model weights")
    p.add_argument("--random-frozen", dest="pretrained", action="store_false",
                   help="build the frozen models with random weights (tests and demos of tiny models only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run_predict_scene)
    return p


def _run_predict_scene(args: argparse.Namespace) -> int:
    from spectralmoe.viz import _float_list

    precision = args.precision or ("bf16" if str(args.device).startswith("cuda") else "fp32")
    summary = predict_scene(
        args.checkpoint, args.input, args.output, sensor=args.sensor, wavelengths=_float_list(args.wavelengths),
        tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device, precision=precision,
        probabilities=args.probabilities, routing=args.routing, routing_layer=args.routing_layer,
        preview=args.preview, overviews=args.overviews, backbone_weights=args.backbone_weights,
        depth_weights=args.depth_weights, pretrained=args.pretrained, progress=not args.quiet,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    print(f"{summary.output}: {summary.height}x{summary.width} class map from {summary.tiles} tiles in "
          f"{summary.seconds:.1f} s ({summary.tiles_per_second:.2f} tiles/s after model loading, {summary.device}, "
          f"{summary.precision})")
    for extra in ("preview", "probabilities", "routing"):
        if getattr(summary, extra) is not None:
            print(f"  {extra}: {getattr(summary, extra)}")
    valid = sum(summary.class_pixels.values())
    for name, count in summary.class_pixels.items():
        print(f"  {name:<24}{count:>14,} px  {100.0 * count / max(valid, 1):6.2f} %")
    print(f"  {'nodata':<24}{summary.nodata_pixels:>14,} px")
    return 0
