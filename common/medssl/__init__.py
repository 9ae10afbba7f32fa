"""medssl: shared library of the medssl-bundles collection."""

__version__ = "0.1.0"
