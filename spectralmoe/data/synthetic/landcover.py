"""Scenes of the SYNTHETIC world: land cover, heights and per-pixel material mixtures.

A ``Scene`` is a square piece of ground ``extent_m`` metres wide, described by random objects
in metric coordinates — smooth noise lattices, a rotated grid of field parcels, a street grid
with building lots, road and river polylines. Nothing is tied to a pixel grid, so one scene can
be sampled at any ground sampling distance (``Scene.ground``): a 4 m and a 10 m sensor see the
same fields, roads and buildings, and thin objects mix into coarse pixels as they would.

How the classes come about (class ids = positions in ``CLASSES``):

* natural cover — four unit-variance fractal noise fields (forest, cropland, grassland, bare soil)
  plus the region's biases; the largest wins, giving organic patches. Cropland is then snapped to
  field parcels (a parcel is cropland when most of it is), so fields have straight edges;
* water — lakes where the terrain is low (terrain noise below the region's water level), plus a
  meandering river in some scenes;
* built-up — where a smooth "urban" field is high; inside it a jittered street grid (class road)
  cuts blocks into lots, and most lots carry one rectangular building with its own height and roof;
* roads — a few straight or gently curved polylines of 7–12 m width, drawn over everything.

Heights (metres above the scene's water level): smooth terrain, flat water, buildings on top of
the terrain, a noisy tree canopy on forest and on some town gardens, low crops.

Every loop here runs over a handful of objects (road segments, noise octaves, classes); all
per-pixel work is vectorised numpy.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from spectralmoe.data.synthetic.regions import Region, get_region
from spectralmoe.data.synthetic.spectra import ENDMEMBERS, endmember_spectra

__all__ = [
    "CLASSES",
    "PALETTE",
    "SURFACE_TYPES",
    "SURFACE_CLASS",
    "NoiseField",
    "Ground",
    "Scene",
    "make_scene",
    "stable_hash",
    "WATER",
    "FOREST",
    "CROPLAND",
    "GRASSLAND",
    "BUILT_UP",
    "ROAD",
    "BARE_SOIL",
]

CLASSES: tuple[str, ...] = ("water", "forest", "cropland", "grassland", "built_up", "road", "bare_soil")
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 92, 230), (38, 115, 0), (255, 211, 127), (163, 255, 115), (200, 0, 0), (255, 255, 0), (160, 120, 80),
)  # fmt: skip
WATER, FOREST, CROPLAND, GRASSLAND, BUILT_UP, ROAD, BARE_SOIL = range(7)
SURFACE_TYPES: tuple[str, ...] = (
    "water_clear", "water_turbid", "forest_canopy", "garden_trees", "crop_sparse", "crop_medium", "crop_dense",
    "field_margin", "grass_green", "grass_dry", "soil_moist", "soil_dry", "roof_concrete", "roof_tile", "roof_metal",
    "yard_paved", "yard_unpaved", "street", "highway",
)  # fmt: skip
"""The world's surface types: the state of what covers each pixel (water turbidity, crop growth stage,
grass dryness, soil moisture, roof material, paving, street or highway), finer than ``CLASSES``."""
SURFACE_CLASS: tuple[int, ...] = (WATER, WATER, FOREST, BUILT_UP, CROPLAND, CROPLAND, CROPLAND, CROPLAND, GRASSLAND,
                                  GRASSLAND, BARE_SOIL, BARE_SOIL, BUILT_UP, BUILT_UP, BUILT_UP, BUILT_UP, BUILT_UP,
                                  ROAD, ROAD)  # fmt: skip
"""The land-cover class (``CLASSES`` index) each surface type lies in."""
_S = {name: i for i, name in enumerate(SURFACE_TYPES)}
_NATURAL = np.array([FOREST, CROPLAND, GRASSLAND, BARE_SOIL], dtype=np.uint8)
_M = {name: i for i, name in enumerate(ENDMEMBERS)}

# 2-D cubic B-spline interpolation of iid N(0, 1) values has a variance of about 0.23; this
# brings a sampled lattice back to about unit variance so thresholds read as quantiles.
_BSPLINE_GAIN = 1.0 / math.sqrt(0.23)


def stable_hash(text: str) -> int:
    """A 32-bit hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(text.encode())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------------------------------ noise
_ORIGIN_NODES = 4  # lattice node k sits at (k - 4)·cell: room for taps at slightly negative coordinates


def _bspline_taps(coords: np.ndarray, cell: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice indices ``[N, 4]`` and cubic B-spline weights ``[N, 4]`` for coordinates (m)."""
    t = coords.astype(np.float64) / cell + _ORIGIN_NODES
    i = np.floor(t).astype(np.int64)
    f = (t - i)[:, None]
    weights = np.concatenate(
        [(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], axis=1
    ) / 6.0
    taps = i[:, None] + np.arange(-1, 3)
    if taps.min() < 0 or taps.max() >= size:
        raise ValueError(
            f"noise lattice of {size} nodes ({cell} m) does not cover coordinates {coords.min()}..{coords.max()} m"
        )
    return taps, weights.astype(np.float32)


def _bspline_sample(lattice: np.ndarray, cell: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """B-spline surface of ``lattice`` at the grid ``xs`` × ``ys`` (m): 4 taps along y, then 4
    along x, i.e. a few passes over the output whatever the lattice size."""
    iy, wy = _bspline_taps(ys, cell, lattice.shape[0])
    ix, wx = _bspline_taps(xs, cell, lattice.shape[1])
    rows = sum(wy[:, k, None] * lattice[iy[:, k]] for k in range(4))  # [ny, lattice width]
    return sum(wx[None, :, k] * rows[:, ix[:, k]] for k in range(4))


@dataclass(frozen=True)
class NoiseField:
    """Fractal value noise, about N(0, 1) everywhere: octaves of N(0, 1) lattices with cell sizes
    in metres and amplitudes falling by ``persistence``, smoothed by cubic B-splines.

    Why one lattice: the coarse octaves are evaluated once, at the nodes of the finest octave's
    lattice, and added to it (a smooth field barely changes under one more B-spline pass), so
    sampling a field costs one B-spline pass over the pixels, however many octaves it has.
    """

    lattice: np.ndarray
    cell_m: float

    @classmethod
    def draw(
        cls, rng: np.random.Generator, extent_m: float, cells_m: Sequence[float], persistence: float = 0.5
    ) -> "NoiseField":
        cells = sorted((float(c) for c in cells_m), reverse=True)
        amps = np.array([persistence**k for k in range(len(cells))])
        amps = amps / np.sqrt((amps**2).sum())
        reach = 1.1 * extent_m + 20.0  # grids may overhang the extent a little
        lattices = [rng.standard_normal((n, n), dtype=np.float32) for n in (int(reach // c) + 16 for c in cells)]
        fine, cell = lattices[-1] * np.float32(amps[-1] * _BSPLINE_GAIN), cells[-1]
        nodes = ((np.arange(fine.shape[0]) - _ORIGIN_NODES) * cell).astype(np.float32)
        for lattice, coarse_cell, amp in zip(lattices[:-1], cells[:-1], amps[:-1]):
            fine += np.float32(amp * _BSPLINE_GAIN) * _bspline_sample(lattice, coarse_cell, nodes, nodes)
        return cls(fine, cell)

    def sample(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Values ``[len(ys), len(xs)]`` at the grid of pixel-centre coordinates ``xs`` × ``ys`` (m)."""
        return _bspline_sample(self.lattice, self.cell_m, xs, ys).astype(np.float32, copy=False)


# -------------------------------------------------------------------------------------- objects
@dataclass(frozen=True)
class _Parcels:
    """Field parcels: columns along u with random widths; each column cut along v at its own
    random lengths. ``keys`` flattens every column's v-boundaries, offset by column × ``stride``,
    into one sorted array so that one ``searchsorted`` finds every pixel's parcel."""

    bu: np.ndarray
    keys: np.ndarray
    stride: float
    v0: float
    growth: np.ndarray
    vigour: np.ndarray
    moisture: np.ndarray


@dataclass(frozen=True)
class _Blocks:
    """Town layout: a jittered street grid (boundaries ``bu``×``bv``), blocks cut into
    ``lots_u``×``lots_v`` lots, one table entry per lot (building footprint, height, roof…)."""

    bu: np.ndarray
    bv: np.ndarray
    street_width_m: float
    lots_u: int
    lots_v: int
    has_building: np.ndarray
    centre_u: np.ndarray
    centre_v: np.ndarray
    half_u: np.ndarray
    half_v: np.ndarray
    height_m: np.ndarray
    roof: np.ndarray
    paved: np.ndarray


@dataclass(frozen=True)
class Ground:
    """A scene sampled on a pixel grid (``gsd_m`` metres per pixel).

    ``label`` uint8 class ids, ``height`` surface height (DSM, m above the water level),
    ``terrain`` bare-earth height (DTM), ``building`` bool footprints, ``abundances`` float32
    ``[M, H, W]`` endmember fractions (times a brightness factor; ``ENDMEMBERS`` order), ``surface``
    uint8 surface types (``SURFACE_TYPES``)."""

    gsd_m: float
    label: np.ndarray
    height: np.ndarray
    terrain: np.ndarray
    building: np.ndarray
    abundances: np.ndarray
    surface: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.label.shape[0]), int(self.label.shape[1])


def _jittered_boundaries(rng: np.random.Generator, half: float, low: float, high: float) -> np.ndarray:
    """Increasing boundaries covering [-half, half] with gaps drawn from U(low, high)."""
    count = int(math.ceil((2 * half + high) / low)) + 2
    gaps = rng.uniform(low, high, count)
    return -half - rng.uniform(0.0, high) + np.concatenate([[0.0], np.cumsum(gaps)])


def _polyline(rng: np.random.Generator, extent: float, angle: float, step: float, wiggle_deg: float) -> np.ndarray:
    """Vertices ``[P, 2]`` (x, y in m) of a line through a random point of the scene, crossing it
    in direction ``angle`` with a heading that wanders by N(0, wiggle) per vertex."""
    centre = rng.uniform(0.0, extent, 2)
    reach = 0.75 * extent + 2 * step
    count = int(math.ceil(reach / step))
    turns = np.deg2rad(rng.normal(0.0, wiggle_deg, 2 * count))
    points = [centre]
    for sign, turn in ((1.0, turns[:count]), (-1.0, turns[count:])):
        heading = angle + np.cumsum(turn)
        steps = sign * step * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        points.append(centre + np.cumsum(steps, axis=0))
    forward, backward = points[1], points[2]
    return np.concatenate([backward[::-1], centre[None], forward], axis=0)


def _polyline_distance(
    xs: np.ndarray, vertices: np.ndarray, reach: float, ys: np.ndarray | None = None
) -> np.ndarray:
    """``[len(ys), len(xs)]`` distance (m) of the grid pixels (centres ``xs`` along x, ``ys`` along y;
    ``ys`` defaults to ``xs``) to a polyline, capped at ``reach``. Loops over its few segments; each
    only visits the grid window within ``reach`` of it."""
    ys = xs if ys is None else ys
    best = np.full((len(ys), len(xs)), reach * reach, dtype=np.float32)
    for (ax, ay), (bx, by) in zip(vertices[:-1], vertices[1:]):
        c0, c1 = np.searchsorted(xs, [min(ax, bx) - reach, max(ax, bx) + reach])
        r0, r1 = np.searchsorted(ys, [min(ay, by) - reach, max(ay, by) + reach])
        if c0 >= c1 or r0 >= r1:
            continue
        x, y = xs[None, c0:c1], ys[r0:r1, None]
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        np.minimum(best[r0:r1, c0:c1], (x - (ax + t * dx)) ** 2 + (y - (ay + t * dy)) ** 2, out=best[r0:r1, c0:c1])
    return np.sqrt(best)


class _LazyFields(dict):
    """``name -> field sampled on the grid xs × ys``, sampled on first access."""

    def __init__(self, fields: dict[str, NoiseField], xs: np.ndarray, ys: np.ndarray) -> None:
        super().__init__()
        self._fields, self._xs, self._ys = fields, xs, ys

    def __missing__(self, name: str) -> np.ndarray:
        value = self[name] = self._fields[name].sample(self._xs, self._ys)
        return value


@dataclass
class Scene:
    """One square scene of the synthetic world (draw it with ``make_scene``). All lengths in metres.

    ``entropy`` is the seed material it was drawn from; sampling (``ground``) draws its white
    noise from it too, so a scene sampled twice on the same grid gives identical arrays.
    """

    region: Region
    extent_m: float
    entropy: tuple[int, ...]
    parcel_angle: float
    street_angle: float
    fields: dict[str, NoiseField]
    parcels: _Parcels
    blocks: _Blocks
    roads: list[tuple[np.ndarray, float]]
    river: tuple[np.ndarray, float] | None
    endmembers: np.ndarray
    sun_elevation_deg: float
    sun_azimuth_deg: float
    crop_height_m: float = 1.0
    _cache: dict[tuple[float, int | None], Ground] = field(default_factory=dict, repr=False)

    def pixel_centres(self, gsd_m: float, size: int | None = None) -> np.ndarray:
        """Coordinates (m) of the pixel centres of a grid of ``gsd_m`` covering the scene."""
        n = int(round(self.extent_m / gsd_m)) if size is None else int(size)
        return ((np.arange(n) + 0.5) * gsd_m).astype(np.float32)

    def ground(self, gsd_m: float, size: int | None = None) -> Ground:
        """The scene sampled on a ``size``×``size`` grid of ``gsd_m`` (default: extent / gsd)."""
        key = (round(float(gsd_m), 9), size)
        if key not in self._cache:
            self._cache.clear()  # keep one grid: scenes are sampled at one or two GSDs in a row
            xs = self.pixel_centres(float(gsd_m), size)
            rng = np.random.default_rng([*self.entropy, 0x6E0, len(xs), int(round(gsd_m * 1e6))])
            self._cache[key] = self._sample(float(gsd_m), xs, xs, rng, None)
        return self._cache[key]

    def ground_window(
        self, gsd_m: float, rows: tuple[int, int], cols: tuple[int, int], crop_parcels: np.ndarray
    ) -> Ground:
        """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of the scene's grid of ``gsd_m``:
        a large scene is rendered window by window in bounded memory (``render.observe_window``).

        Which field parcels are cropland is a vote over each parcel's pixels; a window sees only part
        of a parcel, so the vote comes from ``crop_parcels`` (``crop_parcel_vote`` over the whole
        scene), the same for every window: no seams. The white brightness noise is drawn per window.
        """
        xs = self.pixel_centres(gsd_m, cols[1])[cols[0]:]
        ys = self.pixel_centres(gsd_m, rows[1])[rows[0]:]
        if not (len(xs) and len(ys)):
            raise ValueError(f"empty window rows={rows}, cols={cols}")
        rng = np.random.default_rng([*self.entropy, 0x317D, rows[0], cols[0], len(ys), len(xs),
                                     int(round(gsd_m * 1e6))])  # fmt: skip
        return self._sample(float(gsd_m), xs, ys, rng, np.asarray(crop_parcels, dtype=bool))

    def crop_parcel_vote(self, gsd_m: float, size: int | None = None) -> np.ndarray:
        """Bool per field parcel: cropland when most of its pixels on the ``gsd_m`` grid of the whole
        scene are natural cropland (what ``ground`` decides per grid), computed strip by strip."""
        xs = self.pixel_centres(gsd_m, size)
        p = self.parcels
        counts = np.zeros(len(p.keys), dtype=np.float64)
        crop = np.zeros(len(p.keys), dtype=np.float64)
        for start in range(0, len(xs), 512):
            ys = xs[start:start + 512]
            fields = {name: self.fields[name].sample(xs, ys) for name in ("forest", "cropland", "grassland", "bare")}
            natural = self._natural_cover(fields)[0]
            parcel = self._parcel_geometry(xs, ys)[0]
            counts += np.bincount(parcel.ravel(), minlength=len(p.keys))
            crop += np.bincount(parcel.ravel(), weights=(natural == CROPLAND).ravel(), minlength=len(p.keys))
        return crop > 0.5 * counts

    def _natural_cover(self, f: Any) -> tuple[np.ndarray, np.ndarray]:
        """(natural class per pixel, the four class scores) from the cover noise fields."""
        scores = np.stack([f["forest"], f["cropland"], f["grassland"], f["bare"]])
        scores += np.asarray(self.region.class_bias, dtype=np.float32)[:, None, None]
        return _NATURAL[np.argmax(scores, axis=0)], scores

    def _parcel_geometry(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(parcel id, distance to the parcel's edge in m) of every pixel of the grid ``xs`` × ``ys``."""
        p = self.parcels
        x, y = xs[None, :] - self.extent_m / 2, ys[:, None] - self.extent_m / 2
        cos_p, sin_p = math.cos(self.parcel_angle), math.sin(self.parcel_angle)
        u, v = x * cos_p + y * sin_p, y * cos_p - x * sin_p
        col = np.clip(np.searchsorted(p.bu, u, side="right") - 1, 0, len(p.bu) - 2)
        key = col * p.stride + (v - p.v0)
        parcel = np.clip(np.searchsorted(p.keys, key, side="right") - 1, 0, len(p.keys) - 2)
        edge = np.minimum(
            np.minimum(u - p.bu[col], p.bu[col + 1] - u),
            np.minimum(key - p.keys[parcel], p.keys[parcel + 1] - key),
        ).astype(np.float32)
        return parcel, edge

    # ---------------------------------------------------------------------------- sampling
    def _sample(
        self, gsd: float, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator, crop_parcels: np.ndarray | None
    ) -> Ground:
        """The scene on the grid ``xs`` × ``ys`` (pixel centres, m); ``crop_parcels`` None: the
        cropland vote over this grid's own pixels."""
        region = self.region
        shape = (len(ys), len(xs))
        f = _LazyFields(self.fields, xs, ys)  # a field is sampled only if used (no water: no turbidity)
        x, y = xs[None, :] - self.extent_m / 2, ys[:, None] - self.extent_m / 2  # from the centre; y = south

        # -- natural cover, then cropland snapped to parcels
        natural, scores = self._natural_cover(f)
        label = natural.copy()
        p = self.parcels
        parcel = np.zeros(shape, dtype=np.int64)
        edge = np.full(shape, np.inf, dtype=np.float32)
        crop_natural = natural == CROPLAND
        if crop_natural.any():
            parcel, edge = self._parcel_geometry(xs, ys)
            if crop_parcels is None:
                counts = np.bincount(parcel.ravel(), minlength=len(p.keys))
                crop_share = np.bincount(parcel.ravel(), weights=crop_natural.ravel(), minlength=len(p.keys))
                crop_parcels = crop_share > 0.5 * counts
            crop_parcel = crop_parcels[parcel]
            others = scores[[0, 2, 3]]
            fallback = _NATURAL[[0, 2, 3]][np.argmax(others, axis=0)]
            label = np.where(crop_parcel, CROPLAND, np.where(crop_natural, fallback, natural)).astype(np.uint8)

        # -- towns: street grid, lots, buildings
        town = f["urban"] > region.urban_level
        street = np.zeros(shape, dtype=bool)
        building = np.zeros(shape, dtype=bool)
        lot = np.zeros(shape, dtype=np.int64)
        b = self.blocks
        if town.any():
            cos_s, sin_s = math.cos(self.street_angle), math.sin(self.street_angle)
            us, vs = x * cos_s + y * sin_s, y * cos_s - x * sin_s
            iu = np.clip(np.searchsorted(b.bu, us, side="right") - 1, 0, len(b.bu) - 2)
            iv = np.clip(np.searchsorted(b.bv, vs, side="right") - 1, 0, len(b.bv) - 2)
            du0, du1, dv0, dv1 = us - b.bu[iu], b.bu[iu + 1] - us, vs - b.bv[iv], b.bv[iv + 1] - vs
            street = town & (np.minimum(np.minimum(du0, du1), np.minimum(dv0, dv1)) < b.street_width_m / 2)
            lu = np.minimum(du0 / (du0 + du1) * b.lots_u, b.lots_u - 1e-6)
            lv = np.minimum(dv0 / (dv0 + dv1) * b.lots_v, b.lots_v - 1e-6)
            au, av = lu.astype(np.int64), lv.astype(np.int64)
            lot = ((iu * (len(b.bv) - 1) + iv) * b.lots_u + au) * b.lots_v + av
            building = (
                town & ~street & b.has_building[lot]
                & (np.abs(lu - au - b.centre_u[lot]) < b.half_u[lot])
                & (np.abs(lv - av - b.centre_v[lot]) < b.half_v[lot])
            )  # fmt: skip
            label[town] = BUILT_UP
            label[street] = ROAD

        # -- water: lakes in low terrain, a river
        lake = f["terrain"] < region.water_level
        valley = 40.0 + 2.0 * region.terrain_relief_m  # rivers run at water level in a valley this wide
        if self.river is not None:
            river_distance = _polyline_distance(xs, self.river[0], self.river[1] / 2 + valley, ys)
            river = river_distance < self.river[1] / 2
        else:
            river_distance, river = None, np.zeros(shape, dtype=bool)
        water = lake | river
        label[water] = WATER

        # -- major roads, over everything (bridges over water)
        major = np.zeros(shape, dtype=bool)
        for vertices, width in self.roads:
            major |= _polyline_distance(xs, vertices, width, ys) < width / 2
        label[major] = ROAD
        building &= ~water & ~major

        # -- heights (m above the water level)
        terrain = region.terrain_relief_m * np.maximum(f["terrain"] - region.water_level, 0.0)  # lakes at 0
        if river_distance is not None:
            slope = np.clip((river_distance - self.river[1] / 2) / valley, 0.0, 1.0)
            terrain *= slope * slope * (3.0 - 2.0 * slope)
        forest, built, cropland = label == FOREST, label == BUILT_UP, label == CROPLAND
        gardens = built & ~building
        if gardens.any():
            gardens &= f["garden"] > 0.9
        trees = forest | gardens
        crown = _sigmoid(1.5 * f["crown"]) if trees.any() else np.zeros(shape, dtype=np.float32)
        growth = np.zeros(shape, dtype=np.float32)
        if cropland.any():
            growth = np.clip(p.growth[parcel] + 0.06 * f["vigour"], 0.0, 1.0)
        height = terrain.copy()
        height[building] += b.height_m[lot[building]]
        height[forest] += region.tree_height_m * (0.7 + 0.3 * crown[forest])
        height[gardens] += 0.6 * region.tree_height_m * (0.6 + 0.4 * crown[gardens])
        height[cropland] += self.crop_height_m * growth[cropland]

        # -- materials: endmember fractions per class, computed on that class's pixels only
        a = np.zeros((len(ENDMEMBERS), shape[0] * shape[1]), dtype=np.float32)

        def put(mask: np.ndarray, fractions: Callable[[Callable[[str], np.ndarray]], dict[str, Any]]) -> None:
            where = np.flatnonzero(mask)
            if where.size:

                def at(name: str) -> np.ndarray:  # a noise field at these pixels
                    return f[name].ravel()[where]

                for name, value in fractions(at).items():
                    a[_M[name], where] += value

        def water_mix(at: Callable[[str], np.ndarray]) -> dict[str, Any]:
            turbid = np.clip(region.turbidity + 0.15 * at("turbidity"), 0.0, 1.0)
            return {"water_clear": 1.0 - turbid, "water_turbid": turbid}

        def forest_mix(at: Callable[[str], np.ndarray]) -> dict[str, Any]:
            vig = _sigmoid(1.2 + 0.8 * at("vigour"))
            return {"veg_vigorous": 0.92 * vig, "veg_stressed": 0.92 * (1 - vig), "veg_dry": 0.03, "soil_wet": 0.05}

        def grass_mix(at: Callable[[str], np.ndarray]) -> dict[str, Any]:
            dry, cover = _sigmoid(region.dryness + at("dryness")), np.clip(0.85 + 0.1 * at("vigour"), 0.5, 1.0)
            return {"veg_stressed": 0.7 * cover * (1 - dry), "veg_vigorous": 0.3 * cover * (1 - dry),
                    "veg_dry": cover * dry, "soil_dry": 1.0 - cover}  # fmt: skip

        def soil_mix(at: Callable[[str], np.ndarray]) -> dict[str, Any]:
            moist = _sigmoid(region.soil_moisture + at("moisture"))
            return {"soil_wet": 0.92 * moist, "soil_dry": 0.92 * (1 - moist), "veg_dry": 0.08}

        put(label == WATER, water_mix)
        put(forest, forest_mix)
        put(label == GRASSLAND, grass_mix)
        put(label == BARE_SOIL, soil_mix)
        inner = cropland & (edge >= 1.5)
        g, fv, wet = growth[inner], p.vigour[parcel[inner]], p.moisture[parcel[inner]]
        put(inner, lambda at: {"veg_vigorous": g * fv, "veg_stressed": g * (1 - fv), "soil_wet": (1 - g) * wet,
                               "soil_dry": (1 - g) * (1 - wet)})  # fmt: skip
        put(cropland & (edge < 1.5), lambda at: {"veg_stressed": 0.6, "veg_dry": 0.3, "soil_dry": 0.1})  # margins
        roof = b.roof[lot[building]]
        put(building, lambda at: {"concrete": (roof == 0) * 0.95 + 0.05, "roof_tile": (roof == 1) * 0.95,
                                  "roof_metal": (roof == 2) * 0.95})  # fmt: skip
        yard = built & ~building & ~gardens
        paved = b.paved[lot[yard]]
        put(yard, lambda at: {"concrete": 0.6 * paved, "asphalt": 0.4 * paved, "veg_stressed": 0.6 * (1 - paved),
                              "soil_dry": 0.4 * (1 - paved)})  # fmt: skip
        put(gardens, lambda at: {"veg_vigorous": 0.8, "veg_stressed": 0.15, "soil_dry": 0.05})
        road = label == ROAD
        put(road & ~major, lambda at: {"asphalt": 0.65, "concrete": 0.35})
        put(road & major, lambda at: {"asphalt": 0.85, "concrete": 0.1, "soil_dry": 0.05})
        brightness = 1.0 + 0.07 * f["brightness"] + 0.025 * rng.standard_normal(shape, dtype=np.float32)
        brightness[water] = 1.0 + 0.3 * (brightness[water] - 1.0)
        brightness[forest] *= 0.78 + 0.14 * crown[forest]
        a *= brightness.ravel()[None]

        # -- surface types: the same masks and draws as the materials above, named
        surface = np.full(shape, 255, dtype=np.uint8)
        water_label = label == WATER
        if water_label.any():
            turbid = np.clip(region.turbidity + 0.15 * f["turbidity"], 0.0, 1.0) >= 0.5
            surface[water_label] = np.where(turbid[water_label], _S["water_turbid"], _S["water_clear"])
        surface[forest] = _S["forest_canopy"]
        surface[gardens] = _S["garden_trees"]
        stage = np.digitize(growth[inner], (0.35, 0.7))
        surface[inner] = np.array([_S["crop_sparse"], _S["crop_medium"], _S["crop_dense"]], dtype=np.uint8)[stage]
        surface[cropland & (edge < 1.5)] = _S["field_margin"]
        grass = label == GRASSLAND
        if grass.any():
            dry = region.dryness + f["dryness"] >= 0.0  # sigmoid >= 0.5
            surface[grass] = np.where(dry[grass], _S["grass_dry"], _S["grass_green"])
        soil = label == BARE_SOIL
        if soil.any():
            moist = region.soil_moisture + f["moisture"] >= 0.0
            surface[soil] = np.where(moist[soil], _S["soil_moist"], _S["soil_dry"])
        surface[building] = _S["roof_concrete"] + b.roof[lot[building]].astype(np.uint8)
        surface[yard] = np.where(b.paved[lot[yard]] >= 0.65, _S["yard_paved"], _S["yard_unpaved"])
        surface[road & ~major] = _S["street"]
        surface[road & major] = _S["highway"]
        return Ground(gsd, label, height.astype(np.float32), terrain.astype(np.float32), building, a.reshape(-1, *shape),
                      surface)  # fmt: skip


def make_scene(
    seed: int | Sequence[int] = 0, region: str | Region = "north", extent_m: float = 256.0
) -> Scene:
    """Draw a scene of ``region``, ``extent_m`` wide, from ``seed`` (an int or a sequence of ints:
    ``generate_world`` passes (seed, sensor hash, region hash, tile index)). Deterministic."""
    region = get_region(region)
    entropy = tuple(int(s) for s in (seed if isinstance(seed, Sequence) else (seed,))) + (stable_hash(region.name),)
    rng = np.random.default_rng(list(entropy))
    extent = float(extent_m)
    half = 0.75 * extent + 60.0
    fields = {
        name: NoiseField.draw(rng, extent, cells)
        for name, cells in (
            ("terrain", (420.0, 210.0, 100.0)), ("urban", (360.0, 160.0)), ("forest", (260.0, 120.0, 55.0)),
            ("cropland", (260.0, 120.0, 55.0)), ("grassland", (260.0, 120.0, 55.0)), ("bare", (260.0, 120.0, 55.0)),
            ("vigour", (90.0, 30.0)), ("dryness", (130.0, 45.0)), ("moisture", (110.0, 35.0)),
            ("turbidity", (80.0,)), ("brightness", (30.0, 10.0)), ("garden", (12.0,)), ("crown", (4.0,)),
        )
    }  # fmt: skip
    parcel_angle = float(rng.uniform(0.0, math.pi))
    street_angle = parcel_angle if rng.random() < 0.6 else float(rng.uniform(0.0, math.pi))

    # parcels
    bu = _jittered_boundaries(rng, half, *region.parcel_width_m)
    lmin, lmax = region.parcel_length_m
    rows = int(math.ceil((2 * half + lmax) / lmin)) + 2
    lengths = rng.uniform(lmin, lmax, (len(bu) - 1, rows))
    bv = -half - rng.uniform(0.0, lmax, (len(bu) - 1, 1)) + np.concatenate(
        [np.zeros((len(bu) - 1, 1)), np.cumsum(lengths, axis=1)], axis=1
    )
    v0 = float(bv.min())
    stride = float(bv.max() - v0 + 10.0)
    keys = (np.arange(len(bu) - 1)[:, None] * stride + (bv - v0)).ravel()
    gmin, gmax = region.growth
    parcels = _Parcels(
        bu=bu, keys=keys, stride=stride, v0=v0,
        growth=rng.uniform(gmin, gmax, keys.size), vigour=rng.uniform(0.2, 1.0, keys.size),
        moisture=_sigmoid(region.soil_moisture + rng.normal(0.0, 1.0, keys.size)),
    )  # fmt: skip

    # town blocks and lots
    sbu = _jittered_boundaries(rng, half, *region.block_size_m)
    sbv = _jittered_boundaries(rng, half, *region.block_size_m)
    lots_u, lots_v = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    n_lots = (len(sbu) - 1) * (len(sbv) - 1) * lots_u * lots_v
    hmin, hmax = region.building_height_m
    roof_p = np.asarray(region.roof_mix, dtype=np.float64)
    blocks = _Blocks(
        bu=sbu, bv=sbv, street_width_m=float(rng.uniform(5.0, 8.0)), lots_u=lots_u, lots_v=lots_v,
        has_building=rng.random(n_lots) < region.building_probability,
        centre_u=0.5 + rng.uniform(-0.1, 0.1, n_lots), centre_v=0.5 + rng.uniform(-0.1, 0.1, n_lots),
        half_u=rng.uniform(0.22, 0.4, n_lots), half_v=rng.uniform(0.22, 0.4, n_lots),
        height_m=(hmin + (hmax - hmin) * rng.random(n_lots) ** 2).astype(np.float32),
        roof=rng.choice(3, size=n_lots, p=roof_p / roof_p.sum()),
        paved=rng.uniform(0.35, 0.95, n_lots),
    )  # fmt: skip

    # major roads and an optional river
    n_roads = int(rng.poisson(2.0 * extent / region.road_spacing_m))
    roads = []
    for _ in range(n_roads):
        aligned = rng.random() < 0.5
        angle = parcel_angle + (math.pi / 2) * int(rng.integers(0, 2)) if aligned else float(rng.uniform(0, math.pi))
        roads.append((_polyline(rng, extent, angle, max(extent / 3, 40.0), 6.0), float(rng.uniform(7.0, 12.0))))
    river = None
    if rng.random() < region.river_probability:
        river = (_polyline(rng, extent, float(rng.uniform(0, math.pi)), max(extent / 6, 25.0), 22.0),
                 float(rng.uniform(12.0, 35.0)))  # fmt: skip
    endmembers = endmember_spectra(region, rng)
    elevation = float(rng.uniform(*region.sun_elevation_deg))
    azimuth = float(rng.uniform(120.0, 240.0))
    return Scene(
        region=region, extent_m=extent, entropy=entropy, parcel_angle=parcel_angle, street_angle=street_angle,
        fields=fields, parcels=parcels, blocks=blocks, roads=roads, river=river, endmembers=endmembers,
        sun_elevation_deg=elevation, sun_azimuth_deg=azimuth, crop_height_m=float(rng.uniform(0.5, 1.5)),
    )  # fmt: skip
