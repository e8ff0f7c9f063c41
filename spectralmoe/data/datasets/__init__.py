"""Datasets: one reader for every prepared benchmark (``PreparedDataset``) and one for a user's own
GeoTIFF folder (``GeoTiffFolder``). Both yield the sample dict of DESIGN §2."""

from spectralmoe.data.datasets.geotiff_folder import GeoTiffFolder, read_class_list
from spectralmoe.data.datasets.prepared import PreparedDataset, load_sample

__all__ = ["GeoTiffFolder", "PreparedDataset", "load_sample", "read_class_list"]
