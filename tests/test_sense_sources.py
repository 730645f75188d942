"""The source readers against recorded files in a fake proc root, and live."""
from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given, settings, strategies as st

from aal_core.errors import SourceError
from aal_core.sources.cgroup import CgroupReader
from aal_core.sources.meminfo import MeminfoReader
from aal_core.sources.procmem import process_memory
from aal_core.sources.psi import PsiReader
from aal_core.sources.vmstat import VmstatReader

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "meminfo")


def proc_with(tmp_path, meminfo_fixture: str):
    root = tmp_path / "proc"
    root.mkdir()
    shutil.copy(os.path.join(FIX, meminfo_fixture), root / "meminfo")
    return str(root)


def test_jetson_meminfo_has_nvmap_and_cma(tmp_path):
    m = MeminfoReader(proc_with(tmp_path, "jetson-orin-nano-8g.txt")).read()
    assert m.total == 7620268 * 1024
    assert m.available == 2235476 * 1024
    assert m.nvmap_used == 1543168 * 1024 and m.nvmap_free == 49152 * 1024
    assert m.cma_total == 524288 * 1024 and m.cma_free == 118784 * 1024
    assert m.swap_total == 3810112 * 1024 and not m.available_estimated


def test_missing_memavailable_is_estimated_like_earlyoom(tmp_path):
    m = MeminfoReader(proc_with(tmp_path, "jetson-tx1-l4t24-no-memavailable.txt")).read()
    assert m.available_estimated
    # MemFree + Cached + Buffers - Shmem
    assert m.available == (2531412 + 704376 + 45952 - 12244) * 1024


def test_host_meminfo_has_no_jetson_pools(tmp_path):
    m = MeminfoReader(proc_with(tmp_path, "debian-x86_64-24g.txt")).read()
    assert m.nvmap_used is None and m.cma_total is None
    assert 0 < m.available <= m.total


def test_missing_required_field_names_the_path(tmp_path):
    root = tmp_path / "proc"
    root.mkdir()
    (root / "meminfo").write_bytes(b"MemFree: 100 kB\nCached: 5 kB\n")
    with pytest.raises(SourceError, match=r"proc/meminfo: required field\(s\) MemTotal missing"):
        MeminfoReader(str(root)).read()


def test_absent_file_is_a_source_error_naming_it(tmp_path):
    with pytest.raises(SourceError, match=str(tmp_path) + r"/meminfo: cannot open"):
        MeminfoReader(str(tmp_path))
    with pytest.raises(SourceError, match=str(tmp_path) + r"/memory: cannot open: .* \(kernel without PSI, or psi=0\?\)"):
        PsiReader(str(tmp_path / "memory"))


@pytest.mark.parametrize("reader, name", [(MeminfoReader, "meminfo"), (VmstatReader, "vmstat"),
                                          (lambda root: PsiReader(os.path.join(root, "memory")), "memory")])
def test_a_failing_read_is_a_source_error_naming_the_file(tmp_path, reader, name):
    (tmp_path / name).mkdir()              # opens, but every read fails (EISDIR)
    r = reader(str(tmp_path))
    try:
        with pytest.raises(SourceError, match=str(tmp_path / name) + r": read failed: Is a directory"):
            r.read()
    finally:
        r.close()


def test_reader_keeps_its_fd_and_sees_in_place_rewrites(tmp_path):
    root = proc_with(tmp_path, "container-cgroup-host-view.txt")
    r = MeminfoReader(root)
    first = r.read()
    path = os.path.join(root, "meminfo")
    data = open(path, "rb").read().replace(b"MemAvailable:   52208120", b"MemAvailable:   12208120")
    with open(path, "r+b") as fh:
        fh.write(data)
    assert r.read().available == 12208120 * 1024 != first.available


def test_psi_some_only_kernel(tmp_path):
    p = tmp_path / "memory"
    p.write_bytes(b"some avg10=3.50 avg60=1.25 avg300=0.40 total=998877\n")
    v = PsiReader(str(p)).read()
    assert (v.some_avg10, v.some_avg60, v.some_avg300, v.some_total) == (3.5, 1.25, 0.4, 998877)
    assert v.full_avg10 is None


def test_psi_garbage_is_a_source_error(tmp_path):
    p = tmp_path / "memory"
    p.write_bytes(b"nothing here\n")
    with pytest.raises(SourceError, match="no 'some avg10"):
        PsiReader(str(p)).read()


def test_live_sources_read():
    assert MeminfoReader("/proc").read().total > 0
    v = VmstatReader("/proc").read()
    assert v.pgmajfault >= 0
    if os.path.exists("/proc/pressure/memory"):
        assert PsiReader("/proc/pressure/memory").read().some_total >= 0


def _write(d, files: dict):
    d.mkdir(parents=True, exist_ok=True)
    for k, v in files.items():
        (d / k).write_text(v)


def test_cgroup_v2_files(tmp_path):
    cg = tmp_path / "v2"
    _write(cg, {"memory.max": "536870912\n", "memory.current": "314572800\n",
                "memory.stat": "anon 209715200\nfile 104857600\nactive_file 4194304\ninactive_file 100663296\n",
                "memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n",
                "memory.pressure": "some avg10=1.00 avg60=0.50 avg300=0.10 total=5\n"
                                   "full avg10=0.50 avg60=0.20 avg300=0.00 total=2\n"})
    m = CgroupReader(str(cg)).read()
    assert (m.version, m.limit, m.usage) == (2, 536870912, 314572800)
    assert m.working_set == 314572800 - 100663296
    assert m.oom_kill == 2 and m.psi.full_avg10 == 0.5
    (cg / "memory.max").write_text("max\n")
    assert CgroupReader(str(cg)).read().limit is None


def test_cgroup_v1_files_hierarchical_limit_wins(tmp_path):
    cg = tmp_path / "v1"
    _write(cg, {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "104857600\n",
                "memory.stat": "cache 0\nrss 0\nhierarchical_memory_limit 268435456\n"
                               "total_rss 94371840\ntotal_cache 10485760\ntotal_active_file 0\n"
                               "total_inactive_file 10485760\n",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"})
    m = CgroupReader(str(cg)).read()
    assert (m.version, m.limit, m.oom_kill, m.under_oom) == (1, 268435456, 3, False)
    assert m.working_set == 104857600 - 10485760


def test_cgroup_not_a_cgroup(tmp_path):
    with pytest.raises(SourceError, match="no memory controller files"):
        CgroupReader(str(tmp_path))
    with pytest.raises(SourceError, match="not a cgroup directory"):
        CgroupReader(str(tmp_path / "nope"))


def test_cgroup_malformed_limit_is_a_clear_error(tmp_path):
    cg = tmp_path / "v2"
    _write(cg, {"memory.max": "lots\n", "memory.current": "1\n", "memory.stat": "", "memory.events": ""})
    with pytest.raises(SourceError, match="malformed limit or usage"):
        CgroupReader(str(cg)).read()


@pytest.mark.root
def test_real_v1_cgroup_limit_and_usage():
    base = "/sys/fs/cgroup/memory"
    if not os.path.exists(os.path.join(base, "memory.limit_in_bytes")):
        pytest.skip("no cgroup v1 memory controller")
    path = os.path.join(base, f"aal-test-{os.getpid()}")
    os.makedirs(path)
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as fh:
            fh.write(str(256 << 20))
        m = CgroupReader(path).read()
        assert m.version == 1 and m.limit == 256 << 20 and m.oom_kill == 0
    finally:
        os.rmdir(path)


def test_process_memory_of_self_and_of_a_gone_pid():
    me = process_memory(os.getpid())
    assert me["rss"] > 1 << 20
    assert process_memory(2 ** 22 + 12345) is None


def _v2_leaf(d, max_="max\n", current="314572800\n"):
    _write(d, {"memory.max": max_, "memory.current": current,
               "memory.stat": "anon 1\nfile 0\nactive_file 0\ninactive_file 0\n",
               "memory.events": "oom 0\noom_kill 0\n"})


def test_cgroup_v2_limit_of_an_ancestor_binds(tmp_path):
    # /sys/fs/cgroup (root: no memory.max) / limited.slice (256 MiB) / app.slice (max) / svc (max)
    root = tmp_path / "cgroup"
    _write(root, {"cgroup.controllers": "cpu memory\n", "memory.stat": "anon 1\n"})
    _v2_leaf(root / "limited.slice", max_="268435456\n")
    _v2_leaf(root / "limited.slice" / "app.slice", max_="max\n")
    svc = root / "limited.slice" / "app.slice" / "svc"
    _v2_leaf(svc, max_="max\n", current="104857600\n")
    r = CgroupReader(str(svc))
    assert r.ancestors == [str(root / "limited.slice" / "app.slice" / "memory.max"),
                           str(root / "limited.slice" / "memory.max")]
    m = r.read()
    assert m.limit == 268435456 and m.usage == 104857600
    # its own, tighter limit wins; a parent tightened at run time is seen on the next read
    (svc / "memory.max").write_text("134217728\n")
    assert r.read().limit == 134217728
    with open(root / "limited.slice" / "app.slice" / "memory.max", "r+") as fh:
        fh.write("67108864\n")
    assert r.read().limit == 67108864


def test_cgroup_v2_walk_stops_at_the_given_root(tmp_path):
    # a container's /sys/fs/cgroup (its cgroup namespace root) is a non-root
    # cgroup with a memory.max of its own: it counts, what is above it does not
    host = tmp_path / "host"
    _v2_leaf(host, max_="134217728\n")
    ns_root = host / "container"
    _v2_leaf(ns_root, max_="536870912\n")
    svc = ns_root / "svc"
    _v2_leaf(svc)
    assert CgroupReader(str(svc)).read().limit == 134217728
    r = CgroupReader(str(svc), root=str(ns_root))
    assert r.ancestors == [str(ns_root / "memory.max")] and r.read().limit == 536870912
    assert CgroupReader(str(svc), root=str(svc)).read().limit is None


def test_cgroup_v2_malformed_ancestor_limit_names_the_file(tmp_path):
    parent = tmp_path / "p"
    _v2_leaf(parent, max_="lots\n")
    _v2_leaf(parent / "c")
    with pytest.raises(SourceError, match=r"p/memory.max: malformed memory.max"):
        CgroupReader(str(parent / "c")).read()


def _meminfo_by_init(vals):
    """The reference: what from_values returned through Meminfo's own __init__."""
    from aal_core.sources.meminfo import Meminfo
    (total, free, avail, buffers, cached, swap_t, swap_f, shmem, nv_u, nv_f, cma_t, cma_f) = vals
    est = avail is None
    if est:
        avail = max(0, free + (cached or 0) + (buffers or 0) - (shmem or 0))

    def b(v):
        return None if v is None else v * 1024
    return Meminfo(total=total * 1024, available=min(avail, total) * 1024, free=free * 1024,
                   buffers=(buffers or 0) * 1024, cached=(cached or 0) * 1024,
                   swap_total=(swap_t or 0) * 1024, swap_free=(swap_f or 0) * 1024, shmem=(shmem or 0) * 1024,
                   available_estimated=est, nvmap_used=b(nv_u), nvmap_free=b(nv_f),
                   cma_total=b(cma_t), cma_free=b(cma_f))


opt_kb = st.one_of(st.none(), st.integers(0, 2**44))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2**44), st.integers(0, 2**44), st.tuples(*[opt_kb] * 10))
def test_from_values_is_the_dataclass_sample(total, free, rest):
    import dataclasses
    from aal_core.sources.meminfo import from_values
    vals = (total, free) + rest
    got, want = from_values(vals, "/proc/meminfo"), _meminfo_by_init(vals)
    assert got == want and hash(got) == hash(want) and repr(got) == repr(want)
    assert got.to_dict() == want.to_dict() and dataclasses.asdict(got) == dataclasses.asdict(want)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.total = 1


def test_live_meminfo_sample_is_the_dataclass_sample():
    from aal_core import kvfile
    from aal_core.sources.meminfo import KEYS, from_values
    vals = kvfile.KeyedFile("/proc/meminfo", KEYS).read()
    assert from_values(vals, "/proc/meminfo") == _meminfo_by_init(vals)
