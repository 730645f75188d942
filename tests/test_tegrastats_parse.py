"""What the tegrastats parser makes of each format in the recordings
(FIELDS.md): by name, absent fields absent, odd tokens kept and counted."""
from __future__ import annotations

import os

import pytest

from aal_core.errors import ParseError
from aal_core.tegrastats import parse_tegrastats as parse

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "tegrastats")


def line(name: str, n: int = 0) -> bytes:
    with open(os.path.join(FIX, name), "rb") as fh:
        return [ln.rstrip(b"\n") for ln in fh if ln.strip() and not ln.startswith(b"#")][n]


def test_thor_gpc_clocks_without_utilisation_and_freq_only_engines():
    d = parse(line("agx-thor_jp7.1.txt"))
    assert d["timestamp"] == "05-17-2026 10:00:32"
    assert d["gpu"] == {"freq_mhz": [0, 0, 0]}                # no util printed → none reported
    assert d["engines"]["NVENC0"] == {"online": True, "freq_mhz": 0}
    assert d["engines"]["PVA0"] == {"online": False} and d["engines"]["APE"]["freq_mhz"] == 300
    assert len(d["cpus"]) == 14 and d["cpus"][10] == {"index": 10, "online": True, "util_pct": 3, "freq_mhz": 972}
    assert parse(line("agx-thor_jp7.1.txt", 1))["cpus"][9] == {"index": 9, "online": True, "util_pct": 17, "freq_mhz": 2601}
    assert d["temps_c"]["soc012"] == 33.781 and d["temps_c"]["tj"] == 34.5
    assert d["unknown"] == []


def test_jp72_three_value_rails_and_current_max_temperatures():
    d = parse(line("agx-orin-64gb_jp7.2.txt"))
    assert d["power_mw"]["VDD_GPU_SOC"] == {"current": 5139, "average": 5139, "peak": 5139}
    assert d["temps_c"]["cpu"] == 52.968
    assert d["gpu"] == {"util_pct": 12, "freq_mhz": [1300, 1300]}
    assert d["ram"] == {"used_mb": 20642, "total_mb": 62817, "lfb_blocks": 1, "lfb_block_kb": 2048}
    assert "swap" not in d                                     # not printed → absent, not zero
    assert d["engines"]["NVENC0"] == {"online": False}


def test_runs_of_spaces_and_no_date():
    d = parse(line("agx-orin-32gb_jp6.x-r36.txt"))
    assert "timestamp" not in d
    assert d["engines"]["NVDLA1"] == {"online": False}
    assert d["swap"] == {"used_mb": 4915, "total_mb": 15348, "cached_mb": 1}


def test_nano_iram_pmic_placeholder_and_bare_engine_clocks():
    d = parse(line("nano_jp4.2.txt"))
    assert d["iram"] == {"used_kb": 0, "total_kb": 252, "lfb_kb": 252}
    assert "pmic" not in d["temps_c"] and d["temps_c"]["cpu"] == 60.5
    assert d["engines"]["NVENC"] == {"online": True, "freq_mhz": 716}
    assert d["power_mw"]["POM_5V_IN"] == {"current": 4520, "average": 4680}
    assert d["gpu"] == {"util_pct": 0, "freq_mhz": [76]}


def test_legacy_tx1_shared_clock_cpu_list_and_edp():
    d = parse(line("tx1_l4t24-legacy.txt"))
    assert [c["freq_mhz"] for c in d["cpus"]] == [1734] * 4
    assert [c["util_pct"] for c in d["cpus"]] == [2, 5, 8, 11]
    assert d["emc"] == {"util_pct": 0, "freq_mhz": 1600}
    assert d["edp_limit_mhz"] == 1734
    assert d["engines"]["AVP"] == {"online": True, "util_pct": 1, "freq_mhz": 115}


def test_tx2_mts_and_offline_cores():
    d = parse(line("tx2_jp3.x-l4t28.txt"))
    assert d["mts"] == {"fg_pct": 1, "bg_pct": 8}
    d = parse(b"RAM 1/2MB (lfb 1x4MB) CPU [2%@345,off,off,5%@2035]")
    assert d["cpus"][1] == {"index": 1, "online": False}
    assert d["cpus"][3]["freq_mhz"] == 2035


def test_minus_256_is_absent_and_duplicate_nc_rails_dropped():
    d = parse(b"RAM 1/2MB GPU@-256C CV1@-256C tj@40.5C NC 0mW/0mW VDD_IN 5mW/6mW NC 0mW/0mW")
    assert d["temps_c"] == {"tj": 40.5}
    assert d["power_mw"] == {"VDD_IN": {"current": 5, "average": 6}}


def test_gr3d2_second_gpc_and_lfb_in_kb():
    d = parse(b"RAM 1685/7854MB (lfb 1x512kB) GR3D_FREQ 0% GR3D2_FREQ 3%@114")
    assert d["ram"]["lfb_block_kb"] == 512
    assert d["gpu"] == {"util_pct": 3, "freq_mhz": [114]}


def test_xavier_rails_named_like_cpu_and_gpu_are_rails():
    d = parse(b"RAM 1/2MB GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 GPU@45C")
    assert d["power_mw"]["GPU"] == {"current": 463, "average": 463}
    assert d["power_mw"]["CPU"]["current"] == 618 and "cpus" not in d
    assert d["temps_c"] == {"gpu": 45.0}


def test_negative_rail_and_non_root_forms():
    d = parse(b"RAM 2448/62840MB (lfb 2x4MB) EMC_FREQ 0% GR3D_FREQ 4% VDD_GPU -392mW/0mW")
    assert d["power_mw"]["VDD_GPU"]["current"] == -392
    assert d["emc"] == {"util_pct": 0} and d["gpu"] == {"util_pct": 4}


def test_one_two_and_three_value_rails():
    d = parse(b"RAM 1/2MB VDD_IN 5000mW VDD_GPU 3632/3611 VIN 87426mW/43713mW/87426mW APE 200")
    assert d["power_mw"] == {"VDD_IN": {"current": 5000}, "VDD_GPU": {"current": 3632, "average": 3611},
                             "VIN": {"current": 87426, "average": 43713, "peak": 87426}}
    # a lone number without its unit is an engine clock, not a rail
    assert d["engines"] == {"APE": {"online": True, "freq_mhz": 200}} and d["unknown"] == []


def test_unknown_tokens_are_kept_verbatim():
    d = parse(b"RAM 1/2MB FOO=bar wibble 12.5xyz")
    assert d["unknown"] == ["FOO=bar", "wibble", "12.5xyz"]
    assert d["ram"]["used_mb"] == 1


def test_a_line_with_only_ram():
    assert parse(b"RAM 2448/62840MB (lfb 2x4MB)") == {
        "ram": {"used_mb": 2448, "total_mb": 62840, "lfb_blocks": 2, "lfb_block_kb": 4096}, "unknown": []}


@pytest.mark.parametrize("bad", [b"", b"   ", b"hello world", b"\xff\xfe\x00", b"RAM", b"Segmentation fault"])
def test_unparseable_lines_raise_parse_error(bad):
    with pytest.raises(ParseError):
        parse(bad)
