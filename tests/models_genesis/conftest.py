"""Tests of the Models Genesis bundle import its ``scripts`` package."""

from bundle_env import activate_bundle

activate_bundle("models_genesis")
