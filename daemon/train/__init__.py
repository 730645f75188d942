"""Training loops: the policy ladder, signed commands and their checks.

    ladder.py   pure: rungs from [train], stress -> rung, knobs -> commands
    swing.py    pure: the run's own per-step swing told apart from a ramp
    checks.py   pure: what a client checks before applying a command (also
                used by aal_core.client.train); signed_bytes, sign_command
    unit.py     TrainUnit: train.* methods, pushes, ledger records

The daemon never imports torch: the PyTorch side is aal_core.client.train.
"""
