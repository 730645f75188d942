"""Thermal margin and board power from a parsed tegrastats line: separate
scalars, never folded into RAM stress (a hot board is not a full one)."""
from __future__ import annotations

# Rails that already are the board/module input (summing others would double count).
INPUT_RAILS = ("VDD_IN", "VIN", "POM_5V_IN", "VIN_SYS_5V0")


def temperature(temps: dict) -> tuple[float, str] | None:
    """tj when printed (the SoC's own max), else the hottest zone."""
    if not temps:
        return None
    if "tj" in temps:
        return temps["tj"], "tj"
    name = max(temps, key=temps.get)
    return temps[name], name


def power_mw(rails: dict) -> float | None:
    if not rails:
        return None
    for r in INPUT_RAILS:
        if r in rails:
            return float(rails[r]["current"])
    return float(sum(v["current"] for v in rails.values()))


def scalars(tegra: dict | None, throttle_c: float) -> dict:
    out: dict = {}
    if not tegra:
        return out
    t = temperature(tegra.get("temps_c") or {})
    if t is not None:
        out["temp_c"], out["thermal_sensor"] = t
        out["thermal_margin_c"] = round(throttle_c - t[0], 3)
    p = power_mw(tegra.get("power_mw") or {})
    if p is not None:
        out["power_mw"] = p
    return out
