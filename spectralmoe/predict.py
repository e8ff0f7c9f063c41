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

Memory bound: ``(4·K + 6)·(tile + 256)·width`` bytes of strip buffers for K classes (float32
accumulators and weights, the nodata and extreme-value masks; +5 bytes a pixel with a routing map), ``4·K·256·width``
bytes while a block row is written, one batch of tiles through the model, and GDAL's block cache
(``gdal_cache_mb``, default ``GDAL_CACHE_MB``). It grows with the scene's width, never its height.
Measured with ``benchmarks/scene_memory.py`` (tiny 4-class model, tile 512, batch 4, CPU): a
20,000 × 20,000 × 4-band uint16 scene peaks at 1.32 GB resident — 0.53 GB of it is Python, torch and
the model before the scene is touched, 0.30 GB one batch of activations — and a 2,000 × 20,000 scene
(a tenth of the pixels, same width) at 1.26 GB.

Outputs are checked before the model is built (not an input, not a folder, writable, room for
their uncompressed size: ``spectralmoe.outputs.OutputSet``), written under recognisable temporary
names and replaced together at the end, so an error, Ctrl-C or SIGTERM leaves no half-written file
and the older set of outputs intact; temporaries of a killed run are swept by the next run. Band problems (a missing band,
a different band count) are raised before the model is built and before any file is created.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch

from spectralmoe.bands import BAND_TOLERANCE_UM, BandMismatchError, load_sensor, match_bands
from spectralmoe.errors import InputError, InputWarning, check_int, describe
from spectralmoe.models.segmentor import min_input_size
from spectralmoe.outputs import OutputSet
from spectralmoe.data.prefetch import BackgroundReader
from spectralmoe.viz import CLASS_NAMES_TAG, NODATA_CLASS, default_palette, routing_palette, write_preview

logger = logging.getLogger(__name__)

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
#: Input values further than this many standard deviations from the model's band statistics are reported.
EXTREME_STD = 50.0
#: Input values further than this many standard deviations are no measurement: treated as nodata.
UNUSABLE_STD = 1e6

PathLike = str | os.PathLike[str]
Precision = Literal["fp32", "bf16"]


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
    head: str = "mask2former"

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "in-memory model"

    def files(self) -> dict[str, Path]:
        """The files this checkpoint is read from (no output may replace one of them)."""
        if self.path is None:
            return {}
        if self.kind == "export":
            from spectralmoe.engine.export import CONFIG_FILE, WEIGHTS_FILE

            return {"checkpoint config": self.path / CONFIG_FILE, "checkpoint weights": self.path / WEIGHTS_FILE}
        return {"--checkpoint": self.path}

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
        try:
            task = SegmentationTask.load_from_checkpoint(self.path, map_location="cpu", weights_only=True, **overrides)
            task.configure_model()
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{self.path}: the model cannot be rebuilt from this checkpoint ({describe(error)})") \
                from error
        return task.segmentor


def _palette_or_default(palette: Any, count: int, where: str) -> list[tuple[int, int, int]]:
    if palette is None:
        return default_palette(count)
    try:
        colours = [tuple(int(c) for c in colour[:3]) for colour in palette]
    except (TypeError, ValueError):
        raise InputError(f"{where}: palette must be a list of [r, g, b] colours, got {palette!r}") from None
    if len(colours) != count:
        raise InputError(f"{where}: {len(colours)} palette colours for {count} classes")
    return colours  # type: ignore[return-value]


def _class_names(names: Any, count: int, where: str) -> list[str]:
    """One name per class: a shorter or longer list would mislabel (or drop) the classes of a summary."""
    if names is None:
        return [f"class{i}" for i in range(count)]
    if not isinstance(names, (list, tuple)) or len(names) != count:
        size = len(names) if isinstance(names, (list, tuple)) else names
        raise InputError(f"{where}: {size} class names for {count} classes; every class needs its name")
    return [str(n) for n in names]


def _head_name(config: dict[str, Any]) -> str:
    """The head a stored model decodes with ("dstc" for the complete DSTC model, which has none)."""
    if config.get("architecture", "segmentor") == "dstc":
        return "dstc"
    return str(config.get("head") or "mask2former")


def resolve_checkpoint(checkpoint: PathLike | Any) -> ModelSource:
    """Accept an export folder, a Lightning run folder holding ``export/`` (or ``export_best/``), a
    ``.ckpt`` file, or a ``Segmentor``; return what it says about its model without building it.
    A malformed checkpoint is an ``InputError`` naming its file (nothing is built or written)."""
    from spectralmoe.engine.export import CONFIG_FILE, read_export_config
    from spectralmoe.models.dstc import DSTC
    from spectralmoe.models.factory import resolve_wavelengths
    from spectralmoe.models.segmentor import Segmentor, check_normalisation

    if isinstance(checkpoint, (Segmentor, DSTC)):
        count = int(checkpoint.num_classes if isinstance(checkpoint, DSTC) else getattr(checkpoint.head, "num_classes"))
        adapter = getattr(checkpoint, "adapter", None)
        adapter = "spectralmoe" if _is_spectralmoe(adapter) else type(adapter).__name__.lower()
        return ModelSource("model", None, [float(w) for w in checkpoint.wavelengths.tolist()],
                           [f"class{i}" for i in range(count)], default_palette(count), count, adapter,
                           float(checkpoint.value_scale), checkpoint,
                           head=type(getattr(checkpoint, "head", checkpoint)).__name__.lower())  # fmt: skip
    path = Path(checkpoint)
    if path.is_dir():
        folder = next((f for f in (path, path / "export", path / "export_best") if (f / CONFIG_FILE).is_file()), None)
        if folder is None:
            raise FileNotFoundError(
                f"{path}: not a spectralmoe export (no {CONFIG_FILE}) and no run folder holding export/{CONFIG_FILE} "
                f"or export_best/{CONFIG_FILE}"
            )
        info = read_export_config(folder)
        where = str(folder / CONFIG_FILE)
        build = info["build"]
        try:
            waves, scale = resolve_wavelengths(build.get("sensor"), build.get("wavelengths"))
        except (ValueError, KeyError) as error:
            raise InputError(f"{where}: {describe(error)}") from error
        count = int(build["num_classes"])
        value_scale = build.get("value_scale")
        return ModelSource("export", folder, waves, _class_names(info.get("classes"), count, where),
                           _palette_or_default(info.get("palette"), count, where), count,
                           build.get("adapter", "spectralmoe"), float(value_scale if value_scale else scale),
                           head=_head_name(build))  # fmt: skip
    if path.is_file() and path.suffix == ".ckpt":
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure: name the file
            raise InputError(f"{path}: unreadable Lightning checkpoint ({describe(error).splitlines()[0]})") from error
        hp = stored.get("hyper_parameters") if isinstance(stored, dict) else None
        if not isinstance(hp, dict) or hp.get("num_classes") is None:
            raise InputError(f"{path}: not a SegmentationTask checkpoint (no hyper_parameters with num_classes)")
        where = f"{path} hyper_parameters"
        count = check_int("num_classes", hp["num_classes"], minimum=1, where=where)
        try:
            waves, scale = resolve_wavelengths(None, hp.get("wavelengths"))
        except (ValueError, TypeError) as error:
            raise InputError(f"{where}: {describe(error)}") from error
        check_normalisation(hp.get("pixel_mean"), hp.get("pixel_std"), where=where)
        value_scale = hp.get("value_scale")
        return ModelSource("ckpt", path, waves, _class_names(hp.get("class_names"), count, where),
                           _palette_or_default(hp.get("palette"), count, where), count,
                           hp.get("adapter", "spectralmoe"), float(value_scale if value_scale else scale),
                           head=_head_name(hp))  # fmt: skip
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint (export folder, run folder or .ckpt file)")
    raise InputError(f"{path}: a checkpoint must be an export folder, a run folder holding export/, or a .ckpt file")


def _is_spectralmoe(adapter: Any) -> bool:
    from spectralmoe.models.adapters.spectralmoe import SpectralMoE

    return isinstance(adapter, SpectralMoE)


# ------------------------------------------------------------------------------------ the bands
# ``match_bands`` and ``BandMismatchError`` live in ``spectralmoe.bands`` (one rule for every path) and are
# re-exported here.


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
    #: 0-based input bands fed to the model, in its order (``--json`` prints them 1-based as ``input_bands``)
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
    #: valid pixels no tile scored finitely (written as nodata)
    unscored_pixels: int = 0
    #: valid pixels more than ``EXTREME_STD`` std from the model's band statistics (reported)
    extreme_pixels: int = 0
    #: how the input's bands were matched to the model's: "--sensor NAME", "--wavelengths", the file's
    #: "band descriptions …" / "wavelength metadata", or "assumed: file order = model order"
    bands_matched_by: str = ""
    #: ground area of a pixel (m²) and of each class (ha); ``None`` without a projected georeference
    pixel_area_m2: float | None = None
    class_hectares: dict[str, float] | None = None
    #: with a ground truth: the ``engine.metrics`` report file (+ CSV) and its scores (percent)
    metrics: Path | None = None
    metrics_csv: Path | None = None
    scores: dict[str, Any] | None = None

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
        # printed output counts bands from 1, as GDAL and GIS tools do (the attribute is a 0-based Python list)
        data["input_bands"] = [b + 1 for b in data.pop("bands_used")]
        return _json_safe(data)


def _json_safe(value: Any) -> Any:
    """NaN (an undefined score) → ``None``, so ``--json`` prints valid JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


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
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"--device {device!r} is not a device name; use cpu or cuda[:N]") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} requested but CUDA is not available on this machine (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda[:N], got {device}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _inspect_input(path: Path, nodata: float | None) -> dict[str, Any]:
    """Header facts of the input raster (count, size, dtype, CRS, transform, nodata, mask), plus a read
    of its last row: a truncated file fails here, before the model is built or an output created."""
    import rasterio
    from rasterio.enums import ColorInterp, MaskFlags
    from rasterio.windows import Window

    from spectralmoe.data.io import RasterReadError, honoured_mask, open_raw, raster_shape

    raster_shape(path)  # a missing / unreadable file fails here, with its name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), open_raw(path, rasterio) as src:
            facts = {"count": src.count, "height": src.height, "width": src.width, "dtype": src.dtypes[0],
                     "crs": src.crs, "transform": src.transform,
                     "nodata": src.nodata if nodata is None else float(nodata),
                     "explicit_mask": honoured_mask(src, None),
                     "alpha_bands": [i for i, interp in enumerate(src.colorinterp) if interp == ColorInterp.alpha
                                     and any(MaskFlags.alpha in f for f in src.mask_flag_enums)]}  # fmt: skip
            try:
                src.read(window=Window(0, src.height - 1, src.width, 1))
            except (rasterio.errors.RasterioError, OSError) as error:
                raise RasterReadError(f"{path}: unreadable or truncated raster ({describe(error)})") from error
    if nodata is not None and not math.isfinite(float(nodata)) and not math.isnan(float(nodata)):
        raise InputError(f"--nodata must be a number, got {nodata!r}")
    return facts


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_estimate(height: int, width: int, *, tile: int, classes: int, bands: int, batch_size: int,
                    routing: bool) -> int:  # fmt: skip
    """Bytes ``predict_scene`` allocates beyond the model (see the module docstring's bound): strip
    accumulators, one block row of probabilities, the blending window and one batch of tiles
    (inputs, scores, probabilities)."""
    rows = min(height, tile + BLOCK_SIZE)
    strip = (4 * classes + 6 + (5 if routing else 0)) * rows * width
    flush = 4 * classes * min(BLOCK_SIZE, height) * width
    batch = batch_size * tile * tile * 4 * (bands + 2 * classes)
    return strip + flush + 4 * tile * tile + batch


def _expected_sizes(facts: dict[str, Any], classes: int, targets: dict[str, Path]) -> dict[str, float]:
    """Uncompressed sizes (bytes) of the outputs: the free-space check's estimate."""
    pixels = float(facts["height"]) * float(facts["width"])
    sizes = {"--output": pixels * 4 / 3}  # uint8 map plus its overviews
    if "--probabilities" in targets:
        sizes["--probabilities"] = pixels * 4 * classes
    if "--routing" in targets:
        sizes["--routing"] = pixels
    if "preview" in targets:
        sizes["preview"] = 4e6
    return sizes


def _described_wavelengths(
    path: Path, count: int, source: ModelSource, notes: list[str]
) -> tuple[list[float] | None, str]:
    """Wavelengths of the input's bands from its band descriptions / metadata when they name every
    band; else ``None`` and a warning that the file order is taken for the model's."""
    from spectralmoe.data.io import read_band_info

    info = read_band_info(path)
    described = info.wavelengths()
    if described is not None:
        return list(described[0]), described[1]
    if count == len(source.wavelengths):
        notes.append(f"{path}: no --sensor/--wavelengths, and the band descriptions {info.names()} do not name "
                     f"known bands: assuming the file's bands are in the model's order (wavelengths "
                     f"{[round(w, 3) for w in source.wavelengths]} µm); pass --sensor or --wavelengths if not")  # fmt: skip
        warnings.warn(notes[-1], stacklevel=3)
    return None, "assumed: file order = model order"


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
    gsd_m: float | None = None,
    nodata: float | None = None,
    ground_truth: PathLike | None = None,
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
            wavelength (selected / reordered; ``sensor`` may be a sensor YAML file). Without them the
            file's band descriptions / wavelength metadata are used when they name every band
            ("B", "NIR", "B08", "490 nm"…); else the file order is assumed to be the model's, with a
            warning (and the band count must equal the model's).
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
        gsd_m: ground sampling distance (m) of the scene, for backbones that use one (Copernicus-FM's
            patch-area token); default: the model's own (its training data's). Ignored, with a note, by the others.
        nodata: the input's fill value when its file does not declare one (or declares another): a
            pixel equal to it in every band is nodata.
        ground_truth: a label raster on the scene's grid (class indices, 255 = ignore), checked before the
            model runs; the map is scored against it (``<output stem>_metrics.json`` / ``.csv``: mIoU,
            mAcc, aAcc, per-class IoU/Acc in percent, confusion matrix; ``spectralmoe.map_metrics``).
        read_ahead: batches of tiles read ahead by a background thread while the model runs (0: read
            in turn); each costs one batch of float32 tiles in memory.

    Returns:
        A ``PredictionSummary``.

    Raises:
        BandMismatchError: bands cannot be matched (before the model is built or any file created).
        InputError / FileNotFoundError: bad arguments, files or output paths, each naming the culprit —
            raised before the model is built and before any file is created.

    Non-finite values never become a class: pixels whose input is NaN/inf (or nodata, or masked by the
    file's mask band) and pixels for which no tile produced finite scores are nodata (255), and a
    tile's non-finite scores are left out of the blend, so they cannot spread to valid neighbours.
    Input values more than ``EXTREME_STD`` standard deviations from the model's band statistics are
    counted and reported as a warning (typically an undeclared fill value: pass ``nodata``).
    """
    started = time.perf_counter()
    input_path, output = Path(input), Path(output)
    tile = check_int("--tile", tile, minimum=1)
    overlap = check_int("--overlap", overlap, minimum=0)
    if overlap >= tile:
        raise InputError(f"--overlap {overlap} must be smaller than --tile {tile}")
    batch_size = check_int("--batch-size", batch_size, minimum=1)
    check_int("--routing-layer", routing_layer)
    read_ahead = check_int("read_ahead", read_ahead, minimum=0)
    if precision not in ("fp32", "bf16"):
        raise InputError(f"--precision must be 'fp32' or 'bf16', got {precision!r}")
    if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, (int, float))):
        raise InputError(f"--nodata must be a number, got {nodata!r}")
    targets = {"--output": output}
    if probabilities is not None:
        targets["--probabilities"] = Path(probabilities)
    if routing is not None:
        targets["--routing"] = Path(routing)
    if preview:
        targets["preview"] = output.with_suffix(".png")
    if output.suffix.lower() == ".png":
        raise InputError(f"--output {output} ends in .png; the map is a GeoTIFF (the preview is <output>.png)")
    run_device = _device(device)

    source = resolve_checkpoint(checkpoint)
    if not input_path.exists():
        raise FileNotFoundError(f"--input {input_path}: no such file")
    truth_input = {"--ground-truth": Path(ground_truth)} if ground_truth is not None else {}
    outputs = OutputSet(targets, inputs={"--input": input_path, **truth_input, **source.files()})
    outputs.check()  # output = input, folders, permissions: before reading anything else
    facts = _inspect_input(input_path, nodata)
    where = f"{input_path} (shape {facts['count']}x{facts['height']}x{facts['width']}, {facts['dtype']})"
    notes: list[str] = []
    matched_by = f"--sensor {sensor}" if sensor is not None else "--wavelengths" if wavelengths is not None else ""
    if sensor is None and wavelengths is None:
        wavelengths, matched_by = _described_wavelengths(input_path, facts["count"], source, notes)
    bands = match_bands(source.wavelengths, facts["count"], sensor=sensor, wavelengths=wavelengths,
                        tolerance_um=band_tolerance_um, where=where)  # fmt: skip
    truth_pixels = None
    if ground_truth is not None:
        from spectralmoe.map_metrics import check_ground_truth

        truth_pixels = check_ground_truth(ground_truth, height=facts["height"], width=facts["width"],
                                          crs=facts["crs"], transform=facts["transform"],
                                          num_classes=source.num_classes, scene=str(input_path))  # fmt: skip
    if sensor is not None and source.value_scale is not None:
        scale = load_sensor(sensor).value_scale
        if not math.isclose(scale, source.value_scale, rel_tol=1e-6):
            notes.append(f"sensor {sensor!r} has value scale {scale:g} but the model was trained on data of "
                         f"value scale {source.value_scale:g}: raw values are fed unchanged")  # fmt: skip
            warnings.warn(InputWarning(notes[-1]), stacklevel=2)
    if source.num_classes > NODATA_CLASS:
        raise InputError(f"{source.describe()}: {source.num_classes} classes do not fit a uint8 map with nodata 255")
    if routing is not None and source.adapter != "spectralmoe":
        raise InputError(f"--routing needs a SpectralMoE model; {source.describe()} uses adapter {source.adapter!r}")
    smallest = min_input_size(source.head)
    if tile < smallest:
        raise InputError(f"--tile {tile} is smaller than the {smallest} pixels a model with a {source.head} head "
                         "needs (two feature-map cells at stride 32)")  # fmt: skip
    need = memory_estimate(facts["height"], facts["width"], tile=tile, classes=source.num_classes,
                           bands=len(bands), batch_size=batch_size, routing=routing is not None)  # fmt: skip
    available = _available_memory()
    if available is not None and need > available:
        raise InputError(f"--tile {tile} with --batch-size {batch_size} needs about {need / 2**30:.1f} GiB for the "
                         f"blending buffers and one batch of a {facts['width']}-pixel-wide scene; "
                         f"{available / 2**30:.1f} GiB are available (use a smaller --tile or --batch-size)")  # fmt: skip
    outputs.sizes = _expected_sizes(facts, source.num_classes, targets)
    outputs.check()  # now with the sizes: enough free space for every output

    model = source.load(backbone_weights=backbone_weights, depth_weights=depth_weights, pretrained=pretrained)
    model = model.to(run_device).eval()
    if gsd_m is not None:
        set_gsd = getattr(model.backbone, "set_gsd", None)
        if set_gsd is None:
            notes.append(f"gsd_m={gsd_m:g} ignored: backbone {type(model.backbone).__name__} uses no GSD")
            warnings.warn(notes[-1], stacklevel=2)
        else:
            set_gsd(float(gsd_m))
    if model.num_bands != len(bands):
        raise BandMismatchError(f"{where}: the model expects {model.num_bands} bands, {len(bands)} were matched")
    layer = None
    if routing is not None:
        if not _is_spectralmoe(getattr(model, "adapter", None)):
            raise InputError(f"--routing needs a SpectralMoE adapter, got {type(getattr(model, 'adapter', model)).__name__}")
        layers = model.adapter.num_layers
        layer = routing_layer + layers if routing_layer < 0 else routing_layer
        if not 0 <= layer < layers:
            raise InputError(f"--routing-layer {routing_layer} out of range for {layers} adapted layers")

    # An alpha-flagged band is a mask only when it is not read as data (GDAL flags the 4th band of every
    # 4-band 8-bit GeoTIFF as alpha, which for NIR,R,G,B products is a spectral band).
    alpha_read = sorted(set(facts["alpha_bands"]) & set(bands))
    masked = facts["explicit_mask"] or bool(facts["alpha_bands"] and not alpha_read)
    if alpha_read:
        notes.append(f"{input_path}: band(s) {[b + 1 for b in alpha_read]} are flagged as alpha in the file but read "
                     "as spectral bands; their zeros are data, not nodata")  # fmt: skip
        logger.info(notes[-1])
    run = _run(
        model, source, input_path, outputs, bands, tile=tile, overlap=overlap, batch_size=batch_size,
        device=run_device, precision=precision, routing_layer=layer, overviews=overviews, progress=progress,
        gdal_cache_mb=gdal_cache_mb, nodata=facts["nodata"], masked=masked, read_ahead=read_ahead,
        provenance={"checkpoint": source.describe(), "input": str(input_path), "tile": tile, "overlap": overlap,
                    "bands_used": [b + 1 for b in bands], "precision": precision},
    )  # fmt: skip
    for message in _run_warnings(run, input_path, bands):
        notes.append(message)
        warnings.warn(InputWarning(message), stacklevel=2)
    from spectralmoe.map_metrics import class_areas_ha, pixel_area_m2

    class_pixels = {n: int(c) for n, c in zip(source.class_names, run.counts)}
    area = pixel_area_m2(facts["crs"], facts["transform"])
    metrics_paths: tuple[Path | None, Path | None] = (None, None)
    scores = None
    if ground_truth is not None:
        from spectralmoe.engine.metrics import write_report
        from spectralmoe.map_metrics import score_map

        report = score_map(output, ground_truth, source.class_names)
        report["labelled_ground_truth_pixels"] = truth_pixels
        metrics_paths = write_report(report, output.parent, f"{output.stem}_metrics")
        scene_row = report["domains"]["scene"]
        scores = {"mIoU": scene_row["mIoU"], "mAcc": scene_row["mAcc"], "aAcc": scene_row["aAcc"],
                  "IoU": scene_row["IoU"], "unscored_nodata_pixels": report["unscored_nodata_pixels"]}  # fmt: skip
    return PredictionSummary(
        output=output, preview=targets.get("preview"), probabilities=targets.get("--probabilities"),
        routing=targets.get("--routing"), checkpoint=source.describe(), height=facts["height"], width=facts["width"],
        bands_used=bands, tiles=run.tiles, tiles_skipped=run.skipped, class_names=list(source.class_names),
        class_pixels=class_pixels, nodata_pixels=run.nodata_pixels,
        seconds=time.perf_counter() - started, tile_seconds=run.seconds, device=str(run_device), precision=precision,
        routing_layer=layer, warnings=notes, unscored_pixels=run.unscored, extreme_pixels=run.extreme,
        bands_matched_by=matched_by, pixel_area_m2=area, class_hectares=class_areas_ha(class_pixels, area),
        metrics=metrics_paths[0], metrics_csv=metrics_paths[1], scores=scores,
    )  # fmt: skip


def _run_warnings(run: "_RunResult", input_path: Path, bands: list[int]) -> list[str]:
    messages = []
    if run.unscored:
        messages.append(f"{input_path}: {run.unscored:,} valid pixels got no finite score from the model (written "
                        "as nodata 255); their inputs are probably extreme values")  # fmt: skip
    if run.extreme:
        ranges = ", ".join(f"band {b + 1}: {lo:.4g}..{hi:.4g}" for b, lo, hi in zip(bands, run.band_min, run.band_max))
        messages.append(f"{input_path}: {run.extreme:,} pixels lie more than {EXTREME_STD:g} standard deviations "
                        f"from the model's band statistics (values seen: {ranges}; beyond {UNUSABLE_STD:g} std they "
                        "are written as nodata); if they are fill values, declare them with --nodata VALUE")  # fmt: skip
    return messages


@dataclass
class _RunResult:
    counts: np.ndarray
    skipped: int
    nodata_pixels: int
    tiles: int
    seconds: float
    unscored: int
    extreme: int
    band_min: list[float]
    band_max: list[float]


def _tile_reader(src: Any, path: Path, bands: list[int], mean: np.ndarray, std: np.ndarray, nodata: float | None,
                 masked: bool, tile: int) -> Callable[[_Tile], tuple[np.ndarray, ...]]:  # fmt: skip
    """Reads one tile: ``[C, tile, tile]`` float32 model input (invalid pixels = band means, mirrored
    up to the tile size at scene edges), the ``[h, w]`` invalid mask of its in-scene part (NaN/inf in
    any band, nodata in every band, masked by the file's mask band, or ``UNUSABLE_STD`` away from the
    band statistics), the ``[h, w]`` mask of pixels more than ``EXTREME_STD`` standard deviations away,
    and the per-band minimum and maximum of the measured values."""
    import rasterio
    from rasterio.windows import Window

    from spectralmoe.data.io import RasterReadError

    indexes = [b + 1 for b in bands]

    def read(t: _Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        window = Window(t.left, t.top, t.width, t.height)
        try:
            data = src.read(indexes, window=window, out_dtype="float32")
            mask = src.read_masks(1, window=window) if masked else None
        except (rasterio.errors.RasterioError, OSError) as error:
            raise RasterReadError(f"{path}: unreadable or truncated at rows {t.top}..{t.top + t.height - 1}, columns "
                                  f"{t.left}..{t.left + t.width - 1} ({describe(error)})") from error  # fmt: skip
        invalid = ~np.isfinite(data).all(0)
        if nodata is not None and not math.isnan(nodata):
            invalid |= (data == np.float32(nodata)).all(0)
        if mask is not None:
            invalid |= mask == 0
        with np.errstate(over="ignore", invalid="ignore"):
            distance = (np.abs(data - mean[:, None, None]) / std[:, None, None]).max(0)
        extreme = (distance > EXTREME_STD) & ~invalid
        measured = data[:, ~invalid]
        low = measured.min(1) if measured.size else np.full(len(indexes), np.inf)
        high = measured.max(1) if measured.size else np.full(len(indexes), -np.inf)
        # a value millions of std away is no measurement (an undeclared fill): fed to the model it would
        # turn the scores of the whole tile non-finite, so it is nodata like NaN
        invalid |= extreme & (distance > UNUSABLE_STD)
        if invalid.any():
            data = np.where(invalid[None], mean[:, None, None], data)
        if t.height < tile or t.width < tile:
            data = np.pad(data, ((0, 0), (0, tile - t.height), (0, tile - t.width)), mode="symmetric")
        return data, invalid, extreme, low, high

    return read


def _batches(plan: list[_Tile], size: int) -> Iterator[list[_Tile]]:
    for start in range(0, len(plan), size):
        yield plan[start:start + size]


def _run(
    model: Any, source: ModelSource, input_path: Path, outputs: OutputSet, bands: list[int], *,
    tile: int, overlap: int, batch_size: int, device: torch.device, precision: Precision,
    routing_layer: int | None, overviews: bool, progress: bool, gdal_cache_mb: int, provenance: dict[str, Any],
    nodata: float | None, masked: bool, read_ahead: int = 2,
) -> _RunResult:  # fmt: skip
    """The strip loop, writing every output to its temporary and committing them together at the end."""
    import rasterio
    from rasterio.enums import Resampling
    from tqdm.auto import tqdm

    from spectralmoe.data.io import open_raw

    classes = source.num_classes
    mean = model.pixel_mean.detach().float().cpu().numpy().reshape(-1)
    std = model.pixel_std.detach().float().cpu().numpy().reshape(-1)
    window = blend_window(tile)
    adapter = getattr(model, "adapter", None)  # a complete model (DSTC) has none
    recording = getattr(adapter, "record_routing", None)
    names = {"--output": "classes", "--probabilities": "probabilities", "--routing": "routing"}
    map_path = outputs.targets["--output"]
    try:
        with outputs, contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            stack.enter_context(rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=int(gdal_cache_mb)))
            src = stack.enter_context(open_raw(input_path, rasterio))
            height, width = src.height, src.width
            files: dict[str, Any] = {}
            tmp = {names[flag]: outputs.temporary(flag) for flag in outputs.targets if flag in names}
            files["classes"] = stack.enter_context(
                rasterio.open(tmp["classes"], "w", **_profile(src, 1, "uint8", NODATA_CLASS)))
            files["classes"].write_colormap(1, {**{i: (*c, 255) for i, c in enumerate(source.palette)},
                                                NODATA_CLASS: (0, 0, 0, 0)})  # fmt: skip
            files["classes"].set_band_description(1, "class index (255 = nodata)")
            files["classes"].update_tags(**{CLASS_NAMES_TAG: json.dumps(source.class_names),
                                            "NUM_CLASSES": str(classes), "NODATA_CLASS": str(NODATA_CLASS),
                                            "SPECTRALMOE": json.dumps(provenance)})  # fmt: skip
            if "probabilities" in tmp:
                files["probabilities"] = stack.enter_context(
                    rasterio.open(tmp["probabilities"], "w", **_profile(src, classes, "float32", float("nan"))))
                for i, name in enumerate(source.class_names, start=1):
                    files["probabilities"].set_band_description(i, name)
                files["probabilities"].update_tags(**{CLASS_NAMES_TAG: json.dumps(source.class_names)})
            if "routing" in tmp:
                experts = int(adapter.num_experts)
                files["routing"] = stack.enter_context(
                    rasterio.open(tmp["routing"], "w", **_profile(src, 1, "uint8", NODATA_CLASS)))
                files["routing"].write_colormap(1, {**{e: (*c, 255) for e, c in enumerate(routing_palette(experts))},
                                                    NODATA_CLASS: (0, 0, 0, 0)})  # fmt: skip
                files["routing"].set_band_description(1, f"top-1 visual expert at layer {routing_layer}")
                files["routing"].update_tags(ROUTING_LAYER=str(routing_layer), NUM_EXPERTS=str(experts))
                adapter.record_routing = True
            writer = _BlockRowWriter(files, width)

            # Strip accumulators: scene rows [strip_top, strip_top + rows).
            rows = min(height, tile + BLOCK_SIZE)
            acc = np.zeros((classes, rows, width), dtype=np.float32)
            weight = np.zeros((rows, width), dtype=np.float32)
            invalid = np.zeros((rows, width), dtype=bool)
            extreme = np.zeros((rows, width), dtype=bool)
            route = np.full((rows, width), NODATA_CLASS, dtype=np.uint8) if routing_layer is not None else None
            route_weight = np.zeros((rows, width), dtype=np.float32) if routing_layer is not None else None
            strip_top = 0
            counts = np.zeros(256, dtype=np.int64)
            tally = {"unscored": 0, "extreme": 0}

            def flush(until: int) -> None:
                """Write scene rows [strip_top, until) (whole block rows unless ``until`` is the end)."""
                nonlocal strip_top
                for start in range(strip_top, until, BLOCK_SIZE):
                    n = min(BLOCK_SIZE, until - start)
                    r = start - strip_top
                    # no finite score from any tile (non-finite model output): nodata, never class 0
                    unscored = (weight[r:r + n] <= 0) & ~invalid[r:r + n]
                    bad = invalid[r:r + n] | unscored
                    tally["unscored"] += int(unscored.sum())
                    tally["extreme"] += int(extreme[r:r + n].sum())
                    probs = acc[:, r:r + n] / np.maximum(weight[r:r + n], 1e-12)
                    labels = probs.argmax(0).astype(np.uint8)
                    labels[bad] = NODATA_CLASS
                    counts[:] += np.bincount(labels.ravel(), minlength=256)
                    arrays: dict[str, np.ndarray] = {"classes": labels}
                    if "probabilities" in files:
                        probs[:, bad] = np.nan
                        arrays["probabilities"] = probs
                    if route is not None:
                        arrays["routing"] = np.where(bad, NODATA_CLASS, route[r:r + n])
                    writer.write(arrays)
                shift = until - strip_top
                keep = rows - shift
                for buffer, empty in ((acc, 0.0), (weight, 0.0), (invalid, False), (extreme, False),
                                      (route, NODATA_CLASS), (route_weight, 0.0)):  # fmt: skip
                    if buffer is None:
                        continue
                    if keep > 0:
                        buffer[..., :keep, :] = buffer[..., shift:, :]
                    buffer[..., max(keep, 0):, :] = empty
                strip_top = until

            plan = _plan(height, width, tile, overlap)
            read = _tile_reader(src, input_path, bands, mean, std, nodata, masked, tile)
            band_min = np.full(len(bands), np.inf)
            band_max = np.full(len(bands), -np.inf)
            skipped = 0
            bar = tqdm(total=len(plan), unit="tile", desc=f"predict {input_path.name}", disable=not progress,
                       dynamic_ncols=True)  # fmt: skip
            stack.callback(bar.close)
            patch = int(model.backbone.patch_size) if routing_layer is not None else 0
            loop_started = time.perf_counter()
            # The next batches are read in a background thread while the model runs on this one.
            reader = BackgroundReader(_batches(plan, batch_size), lambda tiles: [read(t) for t in tiles], read_ahead)
            for batch, loaded in stack.enter_context(reader):
                live = [i for i, tile_data in enumerate(loaded) if not tile_data[1].all()]
                probs_np = route_np = None
                for _, _, _, low, high in loaded:
                    band_min[:] = np.minimum(band_min, low)
                    band_max[:] = np.maximum(band_max, high)
                if live:
                    images = torch.from_numpy(np.stack([loaded[i][0] for i in live])).to(device)
                    with torch.inference_mode():
                        with _autocast(device, precision):
                            scores = model.predict_logits(images)
                        head = getattr(model, "head", None)  # a complete model (DSTC) has none: softmax
                        probs_np = _to_probabilities(scores, head).cpu().numpy()  # float32, outside autocast
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
                    extreme[r:r + h, t.left:t.left + w] |= loaded[i][2]
                    if i in slot:
                        k = slot[i]
                        tile_probs = probs_np[k, :, :h, :w]
                        finite = np.isfinite(tile_probs).all(0)  # a non-finite score must not enter the blend
                        weights = window[:h, :w] * finite
                        acc[:, r:r + h, t.left:t.left + w] += np.where(finite, tile_probs, 0.0) * weights
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
                    files["classes"].build_overviews(factors, Resampling.nearest)
                    files["classes"].update_tags(ns="rio_overview", resampling="nearest")
            stack.close()  # every raster closed (flushed) before the preview reads the map
            if "preview" in outputs.targets:
                write_preview(tmp["classes"], outputs.temporary("preview"), class_names=source.class_names,
                              palette=source.palette, title=f"{input_path.name} → {map_path.name}")  # fmt: skip
            # the map last: when it is there, the whole set is
            outputs.commit([f for f in ("--probabilities", "--routing", "preview", "--output") if f in outputs.targets])
    finally:
        if recording is not None:
            adapter.record_routing = recording
            adapter.last_routing = {}
    finite = np.isfinite(band_min)
    return _RunResult(counts[:classes], skipped, int(counts[NODATA_CLASS]), len(plan), loop_seconds,
                      tally["unscored"], tally["extreme"], [float(v) if f else float("nan") for v, f in
                      zip(band_min, finite)], [float(v) if f else float("nan") for v, f in zip(band_max, finite)])  # fmt: skip


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
    bands.add_argument("--sensor", default=None,
                       help="sensor of the input (its band wavelengths): a built-in name, e.g. gf2-16bit, or a sensor "
                       "YAML file; default: the file's band descriptions when they name every band, else file order")
    bands.add_argument("--wavelengths", nargs="+", default=None, metavar="UM",
                       help="centre wavelengths (µm) of the input's bands in file order (nan = non-spectral)")
    p.add_argument("--gsd", dest="gsd_m", type=float, default=None, metavar="M",
                   help="ground sampling distance of the scene in metres, for backbones that use one (Copernicus-FM); "
                   "default: the model's training GSD")
    p.add_argument("--nodata", type=float, default=None,
                   help="fill value of the input when its file declares none (or the wrong one): a pixel equal to it "
                   "in every band is nodata")
    p.add_argument("--ground-truth", type=Path, default=None,
                   help="label raster on the scene's grid (class indices, 255 = ignore): writes <output stem>_metrics"
                   ".json/.csv with per-class IoU (checked before the model runs)")
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
        depth_weights=args.depth_weights, pretrained=args.pretrained, progress=not args.quiet, gsd_m=args.gsd_m,
        nodata=args.nodata, ground_truth=args.ground_truth,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    print(f"{summary.output}: class map of {summary.width} × {summary.height} px (width × height) from "
          f"{summary.tiles} tiles in {summary.seconds:.1f} s ({summary.tiles_per_second:.2f} tiles/s after model "
          f"loading, {summary.device}, {summary.precision})")
    print(f"  input bands {', '.join(str(b + 1) for b in summary.bands_used)} feed model bands "
          f"1..{len(summary.bands_used)} (matched by {summary.bands_matched_by})")
    for extra in ("preview", "probabilities", "routing", "metrics", "metrics_csv"):
        if getattr(summary, extra) is not None:
            print(f"  {extra}: {getattr(summary, extra)}")
    valid = sum(summary.class_pixels.values())
    hectares = summary.class_hectares
    print(f"  {'class':<24}{'pixels':>14}  {'share':>7}{'  area (ha)' if hectares is not None else ''}"
          f"{'   IoU' if summary.scores else ''}")
    for name, count in summary.class_pixels.items():
        area = f"  {hectares[name]:>9.2f}" if hectares is not None else ""
        iou = ""
        if summary.scores:
            value = summary.scores["IoU"].get(name)
            iou = f"  {value:5.1f} %" if value is not None and value == value else "    n/a"
        print(f"  {name:<24}{count:>14,}  {100.0 * count / max(valid, 1):5.1f} %{area}{iou}")
    print(f"  {'nodata':<24}{summary.nodata_pixels:>14,}")
    if hectares is None:
        print("  areas: unknown (the input has no projected georeference)")
    if summary.scores:
        sc = summary.scores
        print(f"  against {args.ground_truth}: mIoU {sc['mIoU']:.1f} %, mAcc {sc['mAcc']:.1f} %, aAcc {sc['aAcc']:.1f} % "
              f"({sc['unscored_nodata_pixels']:,} labelled pixels under nodata not scored)")
    return 0
