"""spectralmoe: domain-generalised segmentation of spectral imagery with frozen foundation models."""

__version__ = "0.1.0"
