"""Models Genesis method code: transforms, networks, cube extraction, metrics."""
