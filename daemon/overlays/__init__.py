"""The overlay bus: external tools run in phases under memory governance,
confined for their phase, recorded in a provenance log anchored in the
ledger (README, "Overlays")."""
