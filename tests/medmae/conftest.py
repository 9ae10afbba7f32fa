"""Tests of the MedMAE bundle import its ``scripts`` package."""

from bundle_env import activate_bundle

activate_bundle("medmae")
