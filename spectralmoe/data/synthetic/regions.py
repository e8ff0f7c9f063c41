"""The regions of the SYNTHETIC world: what differs between "places" (land-cover mix, season, soils).

A region is a bundle of numbers that the land-cover generator (``landcover.py``) and the spectra
(``spectra.py``) read. Two scenes of one region share these statistics but nothing else; two
regions differ the way real cross-region benchmarks do: other class proportions (more bare soil
in the south, more built-up land in the east…), another season (vegetation vigour, red-edge
position, dry grass), other soils (brightness, moisture) and another sun. These values are
invented to give plausible, clearly different domains; they describe no real place.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Region", "REGIONS", "get_region"]


@dataclass(frozen=True)
class Region:
    """Statistics of one synthetic region (lengths in metres, spectral values are reflectance).

    Land cover: ``class_bias`` is added to unit-variance noise fields of forest, cropland,
    grassland and bare soil, the largest wins (so +1 makes a class much more common);
    ``water_level``/``urban_level`` are thresholds on unit-variance fields (lakes below, towns
    above; e.g. -1.3 ≈ 10 % of the area). Season: ``vigour`` is the NIR plateau of healthy
    vegetation, ``red_edge_um`` its red-edge inflection, ``dryness`` the logit of dry grass,
    ``growth`` the range of crop growth stages (vegetation fraction of a parcel).
    """

    name: str
    description: str
    class_bias: tuple[float, float, float, float]  # forest, cropland, grassland, bare_soil
    water_level: float
    river_probability: float
    urban_level: float
    road_spacing_m: float
    parcel_width_m: tuple[float, float]
    parcel_length_m: tuple[float, float]
    block_size_m: tuple[float, float]
    building_probability: float
    building_height_m: tuple[float, float]
    roof_mix: tuple[float, float, float]  # concrete, red tile, dark metal
    terrain_relief_m: float
    tree_height_m: float
    vigour: float
    red_edge_um: float
    dryness: float
    growth: tuple[float, float]
    soil_brightness: float
    soil_moisture: float
    turbidity: float
    sun_elevation_deg: tuple[float, float]


REGIONS: dict[str, Region] = {
    r.name: r
    for r in (
        Region(
            name="north",
            description="temperate lowland in mid-summer: forests and green crops, dark moist soils, small towns",
            class_bias=(0.55, 0.45, 0.1, -1.3), water_level=-1.35, river_probability=0.5, urban_level=1.15,
            road_spacing_m=450.0, parcel_width_m=(35.0, 90.0), parcel_length_m=(60.0, 180.0),
            block_size_m=(45.0, 85.0), building_probability=0.8, building_height_m=(6.0, 22.0),
            roof_mix=(0.3, 0.2, 0.5), terrain_relief_m=15.0, tree_height_m=20.0,
            vigour=0.50, red_edge_um=0.722, dryness=-1.8, growth=(0.55, 1.0),
            soil_brightness=0.75, soil_moisture=0.6, turbidity=0.25, sun_elevation_deg=(40.0, 55.0),
        ),
        Region(
            name="south",
            description="semi-arid plain in the dry season: dry grass, bright bare soils, large fields, red roofs",
            class_bias=(-0.9, 0.35, 0.45, 0.55), water_level=-1.9, river_probability=0.2, urban_level=1.1,
            road_spacing_m=550.0, parcel_width_m=(60.0, 140.0), parcel_length_m=(90.0, 240.0),
            block_size_m=(40.0, 70.0), building_probability=0.9, building_height_m=(4.0, 12.0),
            roof_mix=(0.35, 0.55, 0.1), terrain_relief_m=25.0, tree_height_m=9.0,
            vigour=0.36, red_edge_um=0.708, dryness=0.9, growth=(0.1, 0.7),
            soil_brightness=1.3, soil_moisture=-1.2, turbidity=0.7, sun_elevation_deg=(58.0, 72.0),
        ),
        Region(
            name="east",
            description="dense urban lowland in late spring: much built-up land and roads, river plain",
            class_bias=(-0.3, 0.3, 0.4, -0.6), water_level=-1.5, river_probability=0.7, urban_level=0.15,
            road_spacing_m=300.0, parcel_width_m=(30.0, 70.0), parcel_length_m=(50.0, 120.0),
            block_size_m=(55.0, 110.0), building_probability=0.95, building_height_m=(10.0, 45.0),
            roof_mix=(0.6, 0.1, 0.3), terrain_relief_m=5.0, tree_height_m=15.0,
            vigour=0.44, red_edge_um=0.716, dryness=-0.8, growth=(0.3, 0.9),
            soil_brightness=0.95, soil_moisture=0.0, turbidity=0.5, sun_elevation_deg=(50.0, 62.0),
        ),
        Region(
            name="west",
            description="hilly forest and lake country in autumn: stressed vegetation, low sun, few villages",
            class_bias=(1.0, -0.3, 0.3, -1.0), water_level=-1.0, river_probability=0.3, urban_level=1.6,
            road_spacing_m=700.0, parcel_width_m=(30.0, 70.0), parcel_length_m=(40.0, 110.0),
            block_size_m=(40.0, 70.0), building_probability=0.7, building_height_m=(5.0, 14.0),
            roof_mix=(0.2, 0.3, 0.5), terrain_relief_m=60.0, tree_height_m=24.0,
            vigour=0.40, red_edge_um=0.712, dryness=-0.3, growth=(0.0, 0.5),
            soil_brightness=0.85, soil_moisture=0.8, turbidity=0.15, sun_elevation_deg=(25.0, 38.0),
        ),
    )
}  # fmt: skip


def get_region(name: str | Region) -> Region:
    """A built-in region by name (or the region itself), with the known names in the error."""
    if isinstance(name, Region):
        return name
    try:
        return REGIONS[name]
    except KeyError:
        raise KeyError(f"unknown synthetic region {name!r}; regions: {', '.join(REGIONS)}") from None
