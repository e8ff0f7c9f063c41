"""Data package: region tables shipped with the converters (``*.tsv``).

``oem_regions_UNVERIFIED_continents.tsv`` is OpenEarthMap's region → continent guess, read by
``spectralmoe.data.prepare.openearthmap.read_continents``.
"""
