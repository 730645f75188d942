"""The overlay bus: external tools run in phases under memory governance,
recorded in a provenance log anchored in the ledger (README, "Overlays")."""
