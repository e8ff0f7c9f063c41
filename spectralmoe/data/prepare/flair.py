"""FLAIR #1 (IGN French aerial imagery) → prepared tiles, for the cross-region benchmark ``flair``.

Source:
    FLAIR #1, https://ignf.github.io/FLAIR/ and github.com/IGNF/FLAIR-1. 77,412 patches of
    512×512 px at 0.2 m from 60 French départements: the official train set (61,712 patches,
    50 domains) and test set (15,700 patches, 10 domains), DATA.md §4.

Raw layout read (every archive either as the distributed ``.zip`` or unzipped; anywhere below ``raw``)::

    flair_aerial_train.zip    flair_aerial_train/D006_2020/Z10_UU/img/IMG_002993.tif   5-band uint8
    flair_labels_train.zip    flair_labels_train/D006_2020/Z10_UU/msk/MSK_002993.tif   1-band uint8 1..19
    flair_1_aerial_test.zip   flair_1_aerial_test/D012_2019/Z10_UU/img/IMG_062613.tif
    flair_1_labels_test.zip   flair_1_labels_test/D012_2019/Z10_UU/msk/MSK_062613.tif

Images pair with masks by domain, zone and number (``IMG_n`` ↔ ``MSK_n``). The split is the
archive's: a path whose archive/folder name says ``train`` is source, ``test`` is target (so the
toy set ``flair_1_toy_dataset.zip`` works too). Zip members are extracted one at a time into
``OUT/.raw-work`` and deleted after use; nothing is unpacked in bulk.

Output: ``{image,label}/<Dxxx_yyyy>/<zone>/<number>`` (same relative path and stem, mmseg's
pairing rule). Domain = département ``Dxxx_yyyy``; attributes ``zone``, ``image_id``,
``raw_split``, ``departement``, ``year``.

Bands: raw R, G, B, NIR, Elevation (uint8). Written as R,G,B,NIR (sensor ``flair``) by default,
as the official code feeds 4 channels (DATA.md §4.4); ``keep_elevation`` keeps all five (sensor
``flair-elevation``). Values as stored (uint8).

Classes: the 12 FLAIR classes 1..12 → 0..11 (``reduce_zero_label``). Raw 13..19 (swimming pool,
snow, clear cut, mixed, ligneous, greenhouse, other) are UNVERIFIED in SpectralMoE (DATA.md §4.3):
``other_classes='ignore'`` (default, option A) maps them to 255; ``'other'`` (option B, the FLAIR
baseline) maps them to a 13th class "other" = 12.

Citation:
    Garioud, A., Peillet, S., Bookjans, E., Giordano, S., Wattrelos, B. "FLAIR #1: semantic
    segmentation and domain adaptation dataset." arXiv:2211.12979 (2022).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data import io
from spectralmoe.data.layout import IGNORE_INDEX, PreparedIndex
from spectralmoe.data.prepare.common import PrepareRun, TileArrays, map_labels
from spectralmoe.data.prepare.raw import RawSource, RawTree

logger = logging.getLogger(__name__)

BENCHMARK = "flair"
RAW_BANDS = 5
ARCHIVES: tuple[str, ...] = (
    "flair_aerial_train.zip", "flair_labels_train.zip", "flair_1_aerial_test.zip", "flair_1_labels_test.zip",
)  # fmt: skip
"""The distributed archive names (documentation; any archive or folder whose name says train/test is read)."""

RAW_CLASSES: tuple[str, ...] = (
    "building", "pervious surface", "impervious surface", "bare soil", "water", "coniferous", "deciduous",
    "brushwood", "vineyard", "herbaceous vegetation", "agricultural land", "plowed land", "swimming pool", "snow",
    "clear cut", "mixed", "ligneous", "greenhouse", "other",
)  # fmt: skip
"""The 19 raw classes, raw ids 1..19."""

CLASSES: list[str] = list(RAW_CLASSES[:12])
PALETTE: list[tuple[int, int, int]] = [
    (0xDB, 0x0E, 0x9A), (0x93, 0x8E, 0x7B), (0xF8, 0x0C, 0x00), (0xA9, 0x71, 0x01), (0x15, 0x53, 0xAE),
    (0x19, 0x4A, 0x26), (0x46, 0xE4, 0x83), (0xF3, 0xA6, 0x0D), (0x66, 0x00, 0x82), (0x55, 0xFF, 0x00),
    (0xFF, 0xF3, 0x0D), (0xE4, 0xDF, 0x7C),
]  # fmt: skip
"""FLAIR colours of classes 1..12 (equal to SpectralMoE's palette)."""
OTHER_CLASS = "other"
OTHER_COLOUR = (0, 0, 0)
OTHER_MODES: tuple[str, ...] = ("ignore", "other")

_MEMBER = re.compile(
    r"(?:^|/)(?P<domain>D\d{3}_\d{4})/(?P<zone>[^/]+)/(?P<kind>img|msk)/(?P<prefix>IMG|MSK)_(?P<number>\d+)\.tiff?$",
    re.IGNORECASE,
)
_SPLIT_WORD = re.compile(r"train|test", re.IGNORECASE)
_SPLITS = {"train": "source", "test": "target"}


def label_lookup(other_classes: str = "ignore") -> np.ndarray:
    """256-entry table raw FLAIR value → output index (0..11, 12 = other, 255 ignore, -1 invalid)."""
    if other_classes not in OTHER_MODES:
        raise ValueError(f"other_classes must be one of {OTHER_MODES}, got {other_classes!r}")
    lookup = np.full(256, -1, dtype=np.int16)
    lookup[1:13] = np.arange(12)
    lookup[13 : len(RAW_CLASSES) + 1] = IGNORE_INDEX if other_classes == "ignore" else len(CLASSES)
    return lookup


@dataclass(frozen=True)
class _Entry:
    """One raw file: member ``name`` of ``source`` (the raw folder itself, or one zip archive)."""

    raw_split: str
    domain: str
    zone: str
    kind: str
    number: str
    source: RawSource
    name: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.raw_split, self.domain, self.zone, self.number

    def describe(self) -> str:
        return self.source.describe(self.name)


def scan(tree: RawTree) -> list[_Entry]:
    """Every FLAIR image/mask below the raw folder, unzipped or in ``*.zip`` archives (unzipped files
    win over zipped ones; between archives, the first in path order wins)."""
    folder = tree.whole()
    archives = sorted((f for f in tree.files if f.lower().endswith(".zip")), key=lambda f: f.split("/"))
    found: dict[tuple[str, tuple[str, str, str, str]], _Entry] = {}
    for source in [folder, *(tree.open_path(tree.raw / a) for a in archives)]:
        for match, name in source.match(_MEMBER):
            # The split word is in a folder above <domain>/<zone>/<kind>/ or in the archive's name.
            parts = [source.path.stem] if source.is_zip else []
            parts += name.split("/")[:-4]
            words = [w.lower() for part in parts for w in _SPLIT_WORD.findall(part)]
            if not words:
                where = "path" if source.is_zip else "folder names"
                raise ValueError(f"{source.describe(name)}: cannot tell train from test (no 'train'/'test' in its "
                                 f"{where})")  # fmt: skip
            entry = _Entry(words[-1], match["domain"].upper(), match["zone"], match["kind"].lower(),
                           match["number"], source, name)  # fmt: skip
            found.setdefault((entry.kind, entry.key), entry)
    return list(found.values())


def pair(entries: list[_Entry]) -> list[tuple[_Entry, _Entry]]:
    """(image, mask) pairs sorted by split, domain, zone, number; a missing mask is an error."""
    masks = {e.key: e for e in entries if e.kind == "msk"}
    images = sorted((e for e in entries if e.kind == "img"), key=lambda e: (e.raw_split != "train", *e.key[1:]))
    pairs = []
    for image in images:
        mask = masks.pop(image.key, None)
        if mask is None:
            raise FileNotFoundError(f"{image.describe()}: missing label MSK_{image.number}.tif in "
                                    f"<{image.raw_split} labels>/{image.domain}/{image.zone}/msk/")  # fmt: skip
        pairs.append((image, mask))
    if masks:
        logger.warning("flair: %d masks without an image, ignored (e.g. %s)", len(masks),
                       next(iter(masks.values())).describe())  # fmt: skip
    return pairs


def _tile(image: _Entry, mask: _Entry, lookup: np.ndarray, keep_elevation: bool) -> TileArrays:
    data = image.source.read(image.name, io.read_raster)
    if data.num_bands != RAW_BANDS:
        raise ValueError(f"{image.describe()}: {data.num_bands} bands, but a FLAIR image has {RAW_BANDS} "
                         f"(R,G,B,NIR,Elevation)")  # fmt: skip
    raw_label = mask.source.read(mask.name, io.read_label)
    if raw_label.shape != data.shape:
        raise ValueError(f"{mask.describe()}: label size {raw_label.shape} differs from image size {data.shape} "
                         f"({image.describe()})")  # fmt: skip
    label = map_labels(raw_label, lookup, mask.describe())
    array = data.array if keep_elevation else data.array[:4]
    return TileArrays(np.ascontiguousarray(array), label, data.crs, data.transform if data.crs else None, data.nodata)


def prepare(
    raw: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    other_classes: str = "ignore",
    keep_elevation: bool = False,
) -> PreparedIndex:
    """Convert a FLAIR #1 download (zips and/or unzipped folders) into the prepared layout in ``out``.

    Args:
        raw: folder holding the four archives (``flair_aerial_train.zip`` …) or their unzipped folders.
        out: empty folder, or one this benchmark already wrote into (resumes).
        progress: print progress to stderr.
        other_classes: raw 13..19 → ``"ignore"`` (255, default) or ``"other"`` (class 12, 13 classes).
        keep_elevation: keep the elevation band (5-band tiles, sensor ``flair-elevation``).

    Raises:
        FileNotFoundError: no FLAIR image below ``raw``, or an image without its mask (naming it).
        ValueError: wrong band count, image/label size mismatch, label values outside 1..19 (naming
            the file), an unreadable zip, or options differing from a previous run into ``out``.
    """
    lookup = label_lookup(other_classes)
    tree = RawTree(raw, out)  # checks the raw folder; lists every file once
    pairs = pair(scan(tree))  # everything paired and checked before the output folder is claimed
    if not pairs:
        raise FileNotFoundError(f"{tree.raw}: no FLAIR images (…/Dxxx_yyyy/<zone>/img/IMG_n.tif) in folders or zips "
                                f"({', '.join(ARCHIVES)})")  # fmt: skip
    keep_elevation = bool(keep_elevation)
    sensor = get_sensor("flair-elevation" if keep_elevation else "flair")
    classes = CLASSES + ([OTHER_CLASS] if other_classes == "other" else [])
    palette = PALETTE + ([OTHER_COLOUR] if other_classes == "other" else [])

    # Both options change what a tile file holds (its label values, its band count).
    run = PrepareRun(BENCHMARK, out, progress=progress, raw=raw,
                     tile_options={"other_classes": other_classes, "keep_elevation": keep_elevation})  # fmt: skip
    with tree:  # zip members are extracted one at a time into OUT/.raw-work, removed at the end
        for image, mask in pairs:
            department, year = image.domain.split("_")
            run.add_tile(
                f"{image.domain}/{image.zone}/{image.number}",
                lambda image=image, mask=mask: _tile(image, mask, lookup, keep_elevation),
                split=_SPLITS[image.raw_split],  # type: ignore[arg-type]
                domain=image.domain,
                sensor=sensor.name,
                attributes={"zone": image.zone, "image_id": f"IMG_{image.number}", "raw_split": image.raw_split,
                            "departement": department, "year": year},  # fmt: skip
                band_names=sensor.band_names,
            )
    return run.finish(
        classes=classes,
        palette=palette,
        sensors={sensor.name: sensor},
        options={
            "other_classes": other_classes, "other_classes_unverified": True, "keep_elevation": keep_elevation,
            "raw_classes": list(RAW_CLASSES), "split": "official: train archives → source, test archives → target",
        },
    )  # fmt: skip
