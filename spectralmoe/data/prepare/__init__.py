"""Raw download → prepared tiles, one converter per benchmark, and the registry that names them.

``PREPARERS[name]`` gives a ``Preparer``: the converter function ``prepare(raw, out, *,
progress=True, **options)``, its options as ``name → (type, default, help)`` (types from
``str, int, float, bool, Path``, so a command line can build one flag per option; list-valued
options take a comma-separated string or a file path, as each help says) and a one-line
description.

Importing this package is cheap: the option tables live here and each converter module (which
pulls in numpy and, through ``spectralmoe.bands``, torch) is imported on the first call of its
``prepare``. ``inspect.signature(preparer.prepare)`` gives the converter's real signature.

Modules: ``common`` (PrepareRun: output folder guard, resumable tile writing, the tile-options
record), ``raw`` (zip-or-folder raw input), ``lists`` (split-list files; shipped ones in
``splits/``), ``regions/`` (shipped region tables), and one module per benchmark.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from spectralmoe.data.layout import PreparedIndex

__all__ = ["OPTION_TYPES", "PREPARERS", "Option", "Preparer"]

Option = tuple[type, Any, str]
"""One option: (type, default, help). ``None`` as default means "not given" (the help says what then)."""

OPTION_TYPES: tuple[type, ...] = (str, int, float, bool, Path)


@dataclass(frozen=True)
class Preparer:
    """One benchmark's converter: ``prepare(raw, out, *, progress=True, **options)`` → ``PreparedIndex``."""

    name: str
    prepare: Callable[..., PreparedIndex]
    options: dict[str, Option]
    description: str


class _Deferred:
    """A converter function imported on its first call, so that listing benchmarks and options
    (``spectralmoe prepare --help``) does not import numpy and torch."""

    def __init__(self, module: str, function: str) -> None:
        self.module = f"{__name__}.{module}"
        self.function = function

    def load(self) -> Callable[..., PreparedIndex]:
        """The converter function itself."""
        return getattr(importlib.import_module(self.module), self.function)

    def __call__(self, raw: Any, out: Any, **options: Any) -> PreparedIndex:
        return self.load()(raw, out, **options)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.load())

    def __repr__(self) -> str:
        return f"<converter {self.module}.{self.function}>"


# -------------------------------------------------------------------------------------- options
WHU_OHS_OPTIONS: dict[str, Option] = {
    "source_scenes": (Path, None,
                      "file listing source scene IDs or patterns (e.g. S1, S*), one per line; default: the "
                      "shipped UNVERIFIED list 'S*' (DATA.md §1.4)"),
    "target_scenes": (Path, None,
                      "file listing target scene IDs or patterns, one per line; default: the shipped UNVERIFIED "
                      "list 'T*'. Scenes in neither list are left out"),
    "raw_splits": (str, "tr,val,ts", "comma-separated raw split folders to read"),
    "label_encoding": (str, "raw24",
                       "'raw24': labels hold the 24 raw classes (merged here); 'merged': labels already "
                       "hold merged ids 0..K (0 = unlabeled), as in the official source_dir/target_dir"),
    "merge_table": (Path, None,
                    "file of 'raw_id merged_id [name]' rows replacing the 24→7 merge; default: the shipped "
                    "UNVERIFIED CAS first-level table (DATA.md §1.3)"),
}  # fmt: skip

_FBP_OPTIONS: dict[str, Option] = {
    "fbp_dir": (Path, None, "FBP folder (holding Image__8bit_NirRGB/ and Annotation__index/); default: found "
                            "under --raw"),
    "margins": (str, "60,40,54,54",
                "black border of every raw GF-2 scene, comma-separated 'left,right,top,bottom' px (UNVERIFIED for "
                "all scenes)"),
    "source_labels": (str, "index", "GF-2 labels to read: 'index' (Annotation__index/*_24label.png) or "
                                    "'colour' (Annotation__color/*_24label.tif through the colour table)"),
}  # fmt: skip
FBP_CROSS_SENSOR_OPTIONS: dict[str, Option] = {
    **_FBP_OPTIONS,
    "megacities_dir": (Path, None, "C-megacities folder (holding Image__8bit_NirRGB/ and label_dense__color/); "
                                   "default: found under --raw"),
    "source_scenes": (Path, None, "file listing the GF-2 scenes to use as source (IDs or patterns, one per "
                                  "line); default: all"),
    "target_crop": (int, 1024,
                    "side of the window centred on the labelled area of each C-megacities image; 0 = whole image"),
    "target_sensors": (str, "gf1,sentinel2,planetscope", "comma-separated target sensors to include"),
    "target_meta": (Path, None, "file of '<image name> <sensor> [city]' rows overriding the sensor/city read "
                                "from names and georeference"),
}  # fmt: skip
FBP_CROSS_REGION_OPTIONS: dict[str, Option] = {
    **_FBP_OPTIONS,
    "source_scenes": (Path, None, "file listing source scene IDs (or patterns, one per line); default: every "
                                  "scene not in --target-scenes, or the UNVERIFIED hash split when neither is given"),
    "target_scenes": (Path, None, "file listing target scene IDs (or patterns, one per line); the official list "
                                  "is UNVERIFIED"),
    "target_fraction": (float, 0.16,
                        "UNVERIFIED default split only: fraction of scenes (ranked by SHA-256 of the ID) put in "
                        "the target"),
    "scene_regions": (Path, None, "file of '<scene> <region>' rows; the region becomes the tile's domain "
                                  "(default: the scene ID)"),
}  # fmt: skip

FLAIR_OPTIONS: dict[str, Option] = {
    "other_classes": (str, "ignore",
                      "raw classes 13..19: 'ignore' (→ 255, option A, default) or 'other' (→ a 13th class "
                      "'other', the FLAIR baseline's option B); SpectralMoE's choice is UNVERIFIED (DATA.md §4.3)"),
    "keep_elevation": (bool, False,
                       "keep the 5th (elevation) band: 5-band tiles, sensor 'flair-elevation'; default drops it "
                       "(4-band R,G,B,NIR, sensor 'flair', as the official code)"),
}  # fmt: skip

LOVEDA_OPTIONS: dict[str, Option] = {
    "source_scene": (str, "rural", "scene of the source domain: rural or urban [V: SMoE config]"),
    "target_scene": (str, "urban", "scene of the target domain: rural or urban [V: SMoE config]"),
    "source_splits": (str, "Train,Val",
                      "LoveDA splits feeding the source, comma-separated (Train, Val) [UNVERIFIED: "
                      "Train+Val Rural fits the authors' 9432 source samples]"),
    "target_splits": (str, "Val", "LoveDA splits feeding the target, comma-separated (Train, Val) "
                                  "[V: SMoE config Val/Urban]"),
    "source_tiling": (str, "quarters",
                      "quarters (four 512x512 tiles per 1024x1024 image) or whole [UNVERIFIED default]"),
    "target_tiling": (str, "quarters", "quarters or whole for the target images [UNVERIFIED default]"),
}  # fmt: skip

POTSDAM_VAIHINGEN_OPTIONS: dict[str, Option] = {
    "potsdam_product": (str, "rgb", "Potsdam imagery: rgb (2_Ortho_RGB.zip, R,G,B) [I: the authors' 3-channel "
                                    "source] or rgbir (4_Ortho_RGBIR.zip, R,G,B,NIR)"),
    "potsdam_labels": (str, "noBoundary", "Potsdam labels: noBoundary (5_Labels_all_noBoundary.zip, eroded) [V: mmseg] "
                                          "or all (5_Labels_all.zip)"),
    "potsdam_tiles": (str, "all", "Potsdam scenes of the source: all (38) [I], train (24), test (14), or a "
                                  "comma list such as 2_10,5_15"),
    "vaihingen_labels": (str, "eroded", "Vaihingen labels: eroded (…_ground_truth_eroded_COMPLETE.zip) [V: mmseg] "
                                        "or full (…_ground_truth_COMPLETE.zip)"),
    "vaihingen_areas": (str, "all", "Vaihingen areas of the target: all (33) [UNVERIFIED default], train (16), "
                                    "test (17: mmseg's val set), or a comma list such as 1,6"),
    "tile_size": (int, 512, "tile size of the mmseg clipping grid (no padding; last row/column shifted inward) [V: 512]"),
}  # fmt: skip

OPENEARTHMAP_OPTIONS: dict[str, Option] = {
    "continents": (Path, None, "region→continent table (TSV: header with 'region' and 'continent' or "
                               "'continent_guess'); default: the shipped UNVERIFIED guess "
                               "(regions/oem_regions_UNVERIFIED_continents.tsv)"),
    "ambiguous_continent": (str, None, "continent given to regions the table marks AMBIGUOUS (svaneti); "
                                       "default: skip them [UNVERIFIED]"),
    "target_continents": (str, "Europe", "continent(s) forming the target, comma-separated [V: poster]"),
    "source_splits": (str, "train,val,test", "OEM lists whose non-target images feed the source, "
                                             "comma-separated [UNVERIFIED default: all]"),
    "target_splits": (str, "train,val,test", "OEM lists whose target-continent images feed the target, "
                                             "comma-separated [UNVERIFIED default: all]"),
    "lists_dir": (Path, None, "folder holding train.txt/val.txt/test.txt (and xbd_files.csv); default: "
                              "found inside the download"),
    "xbd_images": (Path, None, "folder of compiled xBD-derived images named <region>_<n>.tif; default: "
                               "only images in the download (the others are skipped with a warning)"),
    "tile_size": (int, 0, "0 = keep native image size [UNVERIFIED default]; N = cut into NxN tiles, "
                          "padding edge tiles (image 0, label 255)"),
}  # fmt: skip


# ------------------------------------------------------------------------------------- registry
def _preparer(name: str, module: str, function: str, options: dict[str, Option], description: str) -> Preparer:
    return Preparer(name, _Deferred(module, function), options, description)


PREPARERS: dict[str, Preparer] = {
    p.name: p
    for p in (
        _preparer("whu-ohs", "whu_ohs", "prepare", WHU_OHS_OPTIONS,
                  "WHU-OHS: 32-band OHS hyperspectral sub-images, source → target scenes (cross-region), "
                  "24 raw classes merged to 7"),
        _preparer("fbp-cross-sensor", "fbp", "prepare_cross_sensor", FBP_CROSS_SENSOR_OPTIONS,
                  "Five-Billion-Pixels GF-2 (source) → C-megacities GF-1 / Sentinel-2 / PlanetScope (target), "
                  "NIR,R,G,B, 24 classes"),
        _preparer("fbp-cross-region", "fbp", "prepare_cross_region", FBP_CROSS_REGION_OPTIONS,
                  "Five-Billion-Pixels GF-2 scenes split into source and target regions by scene lists, "
                  "NIR,R,G,B, 24 classes"),
        _preparer("flair", "flair", "prepare", FLAIR_OPTIONS,
                  "FLAIR #1 aerial R,G,B,NIR(,elevation): train départements (source) → test départements "
                  "(target), 12 classes"),
        _preparer("loveda", "loveda", "prepare", LOVEDA_OPTIONS,
                  "LoveDA RGB: Rural (source) → Urban (target), 7 classes"),
        _preparer("potsdam-vaihingen", "potsdam_vaihingen", "prepare", POTSDAM_VAIHINGEN_OPTIONS,
                  "ISPRS Potsdam R,G,B (source) → Vaihingen NIR,R,G (target), 6 classes"),
        _preparer("openearthmap", "openearthmap", "prepare", OPENEARTHMAP_OPTIONS,
                  "OpenEarthMap RGB: other continents (source) → Europe (target), 8 classes"),
    )
}  # fmt: skip
"""Every benchmark converter by benchmark name (the ``benchmark`` its ``splits.json`` records)."""
