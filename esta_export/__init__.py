"""esta-export: edge deployment compiler and exporter for stitched supernets."""

__version__ = "0.1.0"
