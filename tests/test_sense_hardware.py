"""Hardware detection against fake roots holding a Jetson's
/etc/nv_tegra_release and device-tree model in their real formats, and the
plain machine this runs on; the result as system.status shows it."""
from __future__ import annotations

import pytest

from aal_core import hardware
from aal_core.errors import SourceError
from aal_core.sources import nvml

# Verbatim first lines of /etc/nv_tegra_release (the file has a second,
# "# KERNEL_VARIANT: oot" line on JetPack 6) and device-tree models, which
# the kernel ends with a NUL.
ORIN_NANO_SUPER = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                   "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n",
                   b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
NANO_JP461 = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
              "DATE: Sat Feb 19 17:05:08 UTC 2022\n", b"NVIDIA Jetson Nano Developer Kit\x00")
XAVIER_NX_JP512 = ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                   "DATE: Fri Jun 16 18:13:33 UTC 2023\n", b"NVIDIA Jetson Xavier NX Developer Kit\x00")
THOR_JP71 = ("# R38 (release), REVISION: 4.0, GCID: 41062509, BOARD: generic, EABI: aarch64, "
             "DATE: Mon Sep 15 23:59:03 UTC 2025\n", b"NVIDIA Jetson AGX Thor Developer Kit\x00")


def fake_root(tmp_path, release: str | None, model: bytes | None, dt="proc/device-tree/model"):
    if release is not None:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "nv_tegra_release").write_text(release)
    if model is not None:
        p = tmp_path / dt
        p.parent.mkdir(parents=True)
        p.write_bytes(model)
    return str(tmp_path)


@pytest.mark.parametrize("files,model,l4t,jetpack", [
    (ORIN_NANO_SUPER, "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "36.4.3", "6.2"),
    (NANO_JP461, "NVIDIA Jetson Nano Developer Kit", "32.7.1", "4.6.1"),
    (XAVIER_NX_JP512, "NVIDIA Jetson Xavier NX Developer Kit", "35.4.1", "5.1.2"),
    (THOR_JP71, "NVIDIA Jetson AGX Thor Developer Kit", "38.4.0", "7.1"),
])
def test_jetson_model_and_release(tmp_path, files, model, l4t, jetpack):
    hw = hardware.detect(fake_root(tmp_path, *files), use_nvml=False)
    assert hw.to_dict() == {"kind": "jetson", "gpus": [], "jetson_model": model, "l4t_release": l4t,
                            "jetpack": jetpack}


def test_model_from_sysfs_device_tree_when_proc_has_none(tmp_path):
    root = fake_root(tmp_path, ORIN_NANO_SUPER[0], ORIN_NANO_SUPER[1], dt="sys/firmware/devicetree/base/model")
    assert hardware.detect(root, use_nvml=False).jetson_model.endswith("Developer Kit Super")


def test_device_tree_without_release_file_is_a_jetson_of_unknown_release(tmp_path):
    # a container on a Jetson: the host's device tree, the image's /etc
    hw = hardware.detect(fake_root(tmp_path, None, NANO_JP461[1]), use_nvml=False)
    assert hw.kind == "jetson" and hw.jetson_model == "NVIDIA Jetson Nano Developer Kit"
    assert hw.l4t_release is None and "release unknown" in hw.note


def test_garbled_release_file_says_so(tmp_path):
    hw = hardware.detect(fake_root(tmp_path, "hello\n", None), use_nvml=False)
    assert hw.kind == "jetson" and hw.l4t_release is None and hw.jetpack is None
    assert hw.note == "unrecognised /etc/nv_tegra_release: hello"


def test_neither_gives_one_reason_per_probe(tmp_path):
    hw = hardware.detect(str(tmp_path), use_nvml=False)
    assert hw.to_dict() == {"kind": "none", "gpus": [], "note": "no /etc/nv_tegra_release (not a Jetson)"}


def test_jetpack_table_exact_release_before_major_minor():
    assert hardware.jetpack_of("36.4.4") == "6.2.1"
    assert hardware.jetpack_of("36.4.0") == hardware.jetpack_of("36.4") == "6.1"
    assert hardware.jetpack_of("35.6.0") == "5.1.4"
    assert hardware.jetpack_of("99.1.0") is None and hardware.jetpack_of(None) is None


def _nvml_gpus():
    try:
        return nvml.gpu_names()
    except SourceError as exc:
        return str(exc)


GPUS = _nvml_gpus()


def test_this_machine_nvml_or_its_reason(tmp_path):
    """Whatever NVML says here (a GPU, or no driver) is what detect reports."""
    hw = hardware.detect(str(tmp_path))
    if isinstance(GPUS, list):
        assert hw.kind == "nvml" and hw.gpus == GPUS and hw.gpus
    else:
        assert hw.kind == "none" and hw.note == f"no /etc/nv_tegra_release (not a Jetson); {GPUS}"


@pytest.mark.skipif(not isinstance(GPUS, list), reason=f"needs an NVIDIA GPU: {GPUS}")
def test_nvml_reader_on_a_real_gpu():
    r = nvml.NvmlReader()
    try:
        used, total = r.read()
        assert 0 < used <= total
    finally:
        r.close()


def test_system_status_reports_the_detection(daemon):
    assert daemon.call("system.status")["hardware"] == hardware.detect().to_dict()
