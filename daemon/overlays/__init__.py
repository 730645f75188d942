"""Overlays: external tools run in phases under governance (README, "Overlays")."""
