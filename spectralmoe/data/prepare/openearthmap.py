"""OpenEarthMap (5 continents → Europe) converter: the Zenodo download → prepared tiles (DATA.md §7).

Source
    OpenEarthMap, Zenodo record 7223446 (``OpenEarthMap.zip``): 5000 aerial and satellite RGB
    images of 97 regions on six continents, 0.25–0.5 m, 8 land-cover classes. Images derived
    from xBD are NOT shipped (licence): ``xbd_files.csv`` names them, and the authors'
    ``compile_xbd.py`` writes them next to the labels once xBD is downloaded.

Raw layout read (``OpenEarthMap.zip`` or its unzipped tree, found anywhere below ``--raw``)::

    OpenEarthMap/OpenEarthMap_wo_xBD/<region>/images/<region>_<n>.tif   3-band uint8 GeoTIFF, R,G,B
    OpenEarthMap/OpenEarthMap_wo_xBD/<region>/labels/<region>_<n>.tif   1-band uint8 index 0..8
    train.txt, val.txt, test.txt     bare file names (``aachen_1.tif``), one per line; anywhere in
                                     the tree [U location] or in ``--lists-dir``
    xbd_files.csv                    ``<event>_<id>_pre_disaster.png,<region>_<n>.tif`` rows

Prepared layout written (``spectralmoe.data.layout``)::

    image/<region>/<region>_<n>.tif      native size (default); with --tile-size N:
    image/<region>/<region>_<n>_<row>_<col>.tif   N×N tiles, edge tiles padded (image 0, label 255)
    label/<same>.png                     uint8 class indices 0..7, 255 = ignore

Bands
    R, G, B (sensor ``"rgb"``), as stored; georeference kept. (The authors' cv2 loader gives the
    model B,G,R, DATA.md §8.1: a model-side concern.)

Classes (raw value → index)
    0 unknown → 255 (ignored); 1 bareland → 0, 2 rangeland → 1, 3 developed space → 2, 4 road → 3,
    5 tree → 4, 6 water → 5, 7 agriculture land → 6, 8 building → 7. Other values are an error.

DG split (every choice below is UNVERIFIED except "target = Europe", and each is an option)
    * domain = continent of the tile's region (``europe``, ``asia``, ``north_america``…), from the
      shipped guess ``regions/oem_regions_UNVERIFIED_continents.tsv`` (``--continents FILE`` to
      override); regions the mapping marks AMBIGUOUS (svaneti, Georgia) are skipped with a warning
      unless ``--ambiguous-continent`` names a continent for them.
    * target = regions of ``--target-continents`` (default Europe) [V: poster]; source = all others.
    * both sides take the images of all three official lists (``--source-splits`` /
      ``--target-splits``, default ``train,val,test``); the list of each tile is kept as the
      attribute ``oem_split``.
    * listed xBD-derived images that are not in the download are skipped with one warning giving
      their count; ``--xbd-images DIR`` adds a folder of compiled ones (``<region>_<n>.tif``,
      found at any depth).
    * images keep their native size (``--tile-size 0``); ``--tile-size 512`` cuts them into padded
      512 tiles instead.

Citation
    Junshi Xia, Naoto Yokoya, Bruno Adriano, Clifford Broni-Bediako. "OpenEarthMap: A Benchmark
    Dataset for Global High-Resolution Land Cover Mapping". WACV 2023.
    https://doi.org/10.5281/zenodo.7223446
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data.io import RasterData, read_label
from spectralmoe.data.layout import IGNORE_INDEX, PreparedIndex
from spectralmoe.data.prepare.common import (
    PrepareRun,
    TileArrays,
    grid_windows,
    index_lookup,
    map_labels,
    pad_tile,
    parse_list,
)
from spectralmoe.data.prepare.raw import LazyScene, RawSource, RawTree, read_pair, window_transform

logger = logging.getLogger(__name__)

BENCHMARK = "openearthmap"
CLASSES: list[str] = [
    "bareland", "rangeland", "developed_space", "road", "tree", "water", "agriculture_land", "building",
]  # fmt: skip
PALETTE: list[tuple[int, int, int]] = [
    (128, 0, 0), (0, 255, 36), (148, 148, 148), (255, 255, 255), (34, 97, 38), (0, 69, 255), (75, 181, 73),
    (222, 31, 7),
]  # fmt: skip
SENSOR = "rgb"
OEM_SPLITS = ("train", "val", "test")
DEFAULT_CONTINENTS = Path(__file__).parent / "regions" / "oem_regions_UNVERIFIED_continents.tsv"
AMBIGUOUS = "AMBIGUOUS"

_IMAGE = re.compile(r"(?:^|/)([^/]+)/images/([^/]+\.tif)$", re.I)
_LABEL = re.compile(r"(?:^|/)([^/]+)/labels/([^/]+\.tif)$", re.I)
_LIST = re.compile(r"(?:^|/)(train|val|test)\.txt$")
_XBD = re.compile(r"(?:^|/)xbd_files\.csv$")
_LOOKUP = index_lookup(len(CLASSES))


def slug(continent: str) -> str:
    """Domain name of a continent: ``"North America"`` → ``"north_america"``."""
    return re.sub(r"[^a-z0-9]+", "_", continent.strip().lower()).strip("_")


def region_of(name: str) -> str:
    """``"el_rodeo_12.tif"`` → ``"el_rodeo"`` (region names may contain underscores)."""
    return name.rsplit(".", 1)[0].rsplit("_", 1)[0]


def read_continents(path: str | os.PathLike[str]) -> dict[str, str]:
    """Region → continent from a tab-separated table with a header naming ``region`` and ``continent``
    (or ``continent_guess``); ``#`` lines are comments."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: region→continent table not found")
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    if not lines:
        raise ValueError(f"{path}: empty region→continent table")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    column = next((c for c in ("continent", "continent_guess") if c in header), None)
    if "region" not in header or column is None:
        raise ValueError(f"{path}: header {header} must name 'region' and 'continent' (or 'continent_guess'), tab-separated")
    r, c = header.index("region"), header.index(column)
    table: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) <= max(r, c) or not fields[r].strip() or not fields[c].strip():
            raise ValueError(f"{path}: row {number} ({line!r}) lacks a region or continent")
        table[fields[r].strip()] = fields[c].strip()
    return table


def _read_lists(source: RawSource) -> tuple[dict[str, str], set[str]]:
    """``name → list`` from train/val/test.txt, and the set of xBD-derived names from xbd_files.csv.

    A list found more than once in ``source`` is fine if every copy is identical (else an error)."""
    texts: dict[str, str] = {}
    where: dict[str, str] = {}
    for hit, member in [*source.match(_LIST), *((h, m) for h, m in source.match(_XBD))]:
        key = hit.group(1) if hit.re is _LIST else "xbd"
        text = source.read_text(member)
        if key in texts and texts[key] != text:
            raise ValueError(f"{source.describe(member)} differs from {source.describe(where[key])}; "
                             f"point --lists-dir at the right folder")  # fmt: skip
        texts[key], where[key] = text, member
    split_of: dict[str, str] = {}
    for split in OEM_SPLITS:
        for line in texts.get(split, "").splitlines():
            name = line.strip().replace("\\", "/").rsplit("/", 1)[-1]
            if not name:
                continue
            if name in split_of and split_of[name] != split:
                raise ValueError(f"{name} is listed in both {split_of[name]}.txt and {split}.txt")
            split_of[name] = split
    xbd: set[str] = set()
    if "xbd" in texts:
        for row in csv.reader(_io.StringIO(texts["xbd"])):
            if len(row) >= 2 and row[1].strip().lower().endswith(".tif"):
                xbd.add(row[1].strip())
    else:
        logger.warning("openearthmap: no xbd_files.csv found; listed images missing from the download are errors")
    return split_of, xbd


def _load_scene(source: RawSource, image_name: str, label_source: RawSource, label_name: str,
                ) -> tuple[RasterData, np.ndarray]:  # fmt: skip
    image, raw, label_where = read_pair(source, image_name, label_source, label_name, bands=3,
                                        band_names=get_sensor(SENSOR).band_names, read_label=read_label)  # fmt: skip
    return image, map_labels(raw, _LOOKUP, label_where)


def _padded_tile(scene: LazyScene, top: int, left: int, height: int, width: int, size: int) -> TileArrays:
    image, label = scene.get()
    return TileArrays(
        image=pad_tile(np.ascontiguousarray(image.array[:, top : top + height, left : left + width]), size, 0),
        label=pad_tile(np.ascontiguousarray(label[top : top + height, left : left + width]), size, IGNORE_INDEX),
        crs=image.crs,
        transform=window_transform(image, top, left),
        nodata=image.nodata,
    )


def _name_order(name: str) -> tuple[str, int, str]:
    stem = name.rsplit(".", 1)[0]
    region, _, number = stem.rpartition("_")
    return (region, int(number), stem) if number.isdigit() else (stem, -1, stem)


def _text(path: str | os.PathLike[str] | None) -> str | None:
    """A path option as recorded in ``splits.json`` (JSON has no paths)."""
    return None if path is None else os.fspath(path)


def prepare(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    continents: str | os.PathLike[str] | None = None,
    ambiguous_continent: str | None = None,
    target_continents: str = "Europe",
    source_splits: str = "train,val,test",
    target_splits: str = "train,val,test",
    lists_dir: str | os.PathLike[str] | None = None,
    xbd_images: str | os.PathLike[str] | None = None,
    tile_size: int = 0,
) -> PreparedIndex:
    """Convert the OpenEarthMap download in ``raw`` into prepared tiles in ``out`` (module docstring).

    Raises:
        FileNotFoundError: no OpenEarthMap images, or no split lists.
        ValueError: a listed image without its label, or a listed non-xBD label without its image;
            a label of another size; an image that is not 3-band uint8; label values outside 0..8;
            a region missing from the continent table (each naming the file or region); bad options;
            a ``tile_size`` differing from a previous run into ``out`` (it changes what a tile file holds).
    """
    continents_path = Path(continents) if continents else DEFAULT_CONTINENTS
    continent_of = read_continents(continents_path)
    known = sorted({c for c in continent_of.values() if not c.startswith(AMBIGUOUS)} | (
        {ambiguous_continent} if ambiguous_continent else set()))  # fmt: skip
    targets = parse_list(target_continents, "target_continents", known)
    if not targets:
        raise ValueError("target_continents names no continent")
    source_lists = parse_list(source_splits, "source_splits", OEM_SPLITS)
    target_lists = parse_list(target_splits, "target_splits", OEM_SPLITS)
    if not source_lists or not target_lists:
        raise ValueError("source_splits and target_splits must each name at least one of train, val, test")
    tile_size = int(tile_size)
    if tile_size < 0:
        raise ValueError(f"tile_size must be 0 (native size) or positive, got {tile_size}")
    options = dict(continents=_text(continents), continent_table=str(continents_path),
                   ambiguous_continent=ambiguous_continent, target_continents=target_continents,
                   source_splits=source_splits, target_splits=target_splits, lists_dir=_text(lists_dir),
                   xbd_images=_text(xbd_images), tile_size=tile_size)  # fmt: skip

    tree = RawTree(raw, out)
    # tile_size decides what a tile file named <stem>_<row>_<col> holds; the other options only
    # decide which images are converted and how they are grouped.
    run = PrepareRun(BENCHMARK, out, progress=progress, raw=raw, tile_options={"tile_size": tile_size})
    sensor = get_sensor(SENSOR)
    with tree:
        # Pass 1: index the download, read the lists, and decide every image before writing.
        found = tree.find("OpenEarthMap.zip")
        data = found if found is not None else tree.whole()
        images: dict[str, tuple[RawSource, str]] = {}
        labels: dict[str, tuple[RawSource, str]] = {}
        for pattern, table, kind in ((_IMAGE, images, "image"), (_LABEL, labels, "label")):
            for hit, member in data.match(pattern):
                name = hit.group(2)
                if name in table:
                    raise ValueError(f"{kind} {name} found twice: {data.describe(table[name][1])} and "
                                     f"{data.describe(member)}")  # fmt: skip
                table[name] = (data, member)
        if xbd_images:  # compiled xBD-derived images: any <region>_<n>.tif at any depth, not under labels/
            compiled = tree.open_path(xbd_images)
            for member in compiled.names:
                base = member.rsplit("/", 1)[-1]
                if base.lower().endswith(".tif") and base not in images and "/labels/" not in f"/{member}":
                    images[base] = (compiled, member)
        if not images and not labels:
            raise FileNotFoundError(f"{tree.raw}: no OpenEarthMap <region>/images/*.tif found "
                                    f"(expected OpenEarthMap.zip or its unzipped tree)")  # fmt: skip
        list_source = tree.open_path(lists_dir) if lists_dir else data
        split_of, xbd = _read_lists(list_source)
        for split in dict.fromkeys(source_lists + target_lists):
            if split not in split_of.values():
                raise FileNotFoundError(f"{split}.txt not found (or empty) in {list_source.path}; "
                                        f"give its folder with --lists-dir")  # fmt: skip

        plan: list[tuple[str, str, str, str]] = []  # (name, region, continent, side)
        skipped_xbd: list[str] = []
        ambiguous: set[str] = set()
        missing_label: list[str] = []
        missing_image: list[str] = []
        for name in sorted(split_of, key=_name_order):
            split = split_of[name]
            region = region_of(name)
            if region not in continent_of:
                raise ValueError(f"{name}: region {region!r} is not in the region→continent table {continents_path}")
            continent = continent_of[region]
            if continent.startswith(AMBIGUOUS):
                if not ambiguous_continent:
                    ambiguous.add(region)
                    continue
                continent = ambiguous_continent
            side = "target" if continent in targets else "source"
            if split not in (target_lists if side == "target" else source_lists):
                continue
            if name not in images:
                if name in xbd:
                    skipped_xbd.append(name)
                    continue
                missing_image.append(name)
                continue
            if name not in labels:
                missing_label.append(name)
                continue
            plan.append((name, region, continent, side))
        if missing_label:
            per_split = {s: sum(split_of[n] == s for n in missing_label) for s in OEM_SPLITS}
            shown = ", ".join(images[n][0].describe(images[n][1]) for n in missing_label[:5])
            raise ValueError(
                f"missing label: {len(missing_label)} listed OpenEarthMap image(s) have no labels/<name>.tif "
                f"(per list: {per_split}): {shown}. If the download ships no labels for a list, leave it "
                f"out with --source-splits / --target-splits"
            )
        if missing_image:
            raise ValueError(
                f"missing image: {len(missing_image)} listed OpenEarthMap image(s) are neither in the download "
                f"nor xBD-derived (xbd_files.csv): {', '.join(missing_image[:5])}"
            )
        if ambiguous:
            warnings.warn(f"openearthmap: regions {sorted(ambiguous)} have an AMBIGUOUS continent in "
                          f"{continents_path} and are skipped (set --ambiguous-continent to keep them)",
                          stacklevel=2)  # fmt: skip
        if skipped_xbd:
            regions = sorted({region_of(n) for n in skipped_xbd})
            warnings.warn(
                f"openearthmap: skipped {len(skipped_xbd)} xBD-derived image(s) with labels but no image "
                f"(regions: {', '.join(regions)}); compile them from xBD and pass --xbd-images to include them",
                stacklevel=2,
            )
        if not plan:
            raise FileNotFoundError(f"{tree.raw}: no listed OpenEarthMap image to convert")

        # Pass 2: tiles; an image is read only if one of its tiles is missing.
        for name, region, continent, side in plan:
            image_src, image_member = images[name]
            label_src, label_member = labels[name]
            stem = name.rsplit(".", 1)[0]
            scene = LazyScene(
                lambda i=image_src, n=image_member, l=label_src, m=label_member: _load_scene(i, n, l, m),  # noqa: E741
                lambda i=image_src, n=image_member, l=label_src, m=label_member: (i.release(n), l.release(m)),  # noqa: E741
            )
            attributes = {"region": region, "continent": continent, "oem_split": split_of[name], "image": stem}
            if tile_size == 0:
                tiles = [(f"{region}/{stem}", lambda s=scene: s.tile(0, 0, *s.get()[0].shape), attributes)]
            else:
                _, height, width, _ = image_src.raster_shape(image_member)
                tiles = [
                    (f"{region}/{stem}_{w.row}_{w.col}",
                     lambda s=scene, w=w: _padded_tile(s, w.top, w.left, w.height, w.width, tile_size),
                     {**attributes, "row": str(w.row), "col": str(w.col)})
                    for w in grid_windows(height, width, tile_size)
                ]  # fmt: skip
            for relative, make, attrs in tiles:
                run.add_tile(relative, make, split=side, domain=slug(continent), sensor=SENSOR,  # type: ignore[arg-type]
                             attributes=attrs, band_names=sensor.band_names)  # fmt: skip
            scene.release()
        return run.finish(classes=CLASSES, palette=PALETTE, sensors={SENSOR: sensor}, options=options)
