"""Data: prepared-benchmark layout, raw → tiles converters, datasets, transforms, DG tasks."""
