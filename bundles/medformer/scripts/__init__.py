"""Medformer method code: dataset registry and loading, the multitask network, losses, metrics and monitoring."""
