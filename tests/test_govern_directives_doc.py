"""Directives say what they mean (issue 9, part 5): the README's API section
defines every metadata field and names the notifications that are pushed,
and a `--local` run keeps its job cgroups in a place of its own."""
import os
import re
import subprocess
import uuid

import pytest

from aal_core.config import local_cgroup_group, local_defaults, load
from aal_core.errors import ConfigError
from aal_core.govern.cgroups import CgroupEnforcer
from aal_core.govern.governor import DEGRADATION_FIELDS
from helpers import short_tmpdir, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
PROTO = open(os.path.join(ROOT, "contracts", "aal_core", "v1", "govern.proto")).read()


def _table_after(heading: str) -> list[list[str]]:
    """Rows (cells stripped of backticks) of the first table after `heading`."""
    i = README.index(heading)
    rows = []
    for line in README[i:].splitlines():
        if line.startswith("|"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if not set(cells[0]) <= set("-: "):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]                       # without the header


def test_every_metadata_field_is_defined_in_the_readme_and_the_proto():
    rows = _table_after("**The metadata fields**")
    assert {r[0] for r in rows} == set(DEGRADATION_FIELDS)
    for name, units, meaning in rows:
        assert units and len(meaning) > 20, name
    kv = next(r for r in rows if r[0] == "kv_shrink_factor")[2]
    # a fraction of what: the unshrunk size, applied as footprint x new / old
    assert "unshrunk size" in kv and "footprint_now × new / old" in kv
    directive = PROTO[PROTO.index("message Directive {"):]
    directive = directive[:directive.index("}")]
    for name in DEGRADATION_FIELDS:
        assert re.search(rf"//\s+{name}\s", directive), name


def test_the_documented_shrink_is_what_the_client_library_does():
    """A client written from the README: 1.0 -> 0.75 -> 0.5 frees a quarter,
    then a third of what is left (footprint x new / old), with a cap far
    above the footprint (the case a 'fraction of the cap' reading gets wrong)."""
    torch = pytest.importorskip("torch")
    from aal_core.client.kv import KVCache
    c = KVCache(n_layers=2, n_heads=4, head_dim=32, block_tokens=16, capacity_bytes=1000 * 16384,
                purge="ON_EVENT", min_blocks_per_seq=1)
    tok = torch.ones((2, 2, 4, 32), dtype=torch.float16)
    for i in range(40 * 16):
        c.append("a", tok)
    full = c.used_bytes()
    assert full == 40 * c.block_bytes
    c.apply({"kind": "APPLY", "metadata": {"kv_shrink_factor": 0.75}})
    assert c.used_bytes() == full * 3 // 4
    c.apply({"kind": "APPLY", "metadata": {"kv_shrink_factor": 0.5}})
    assert c.used_bytes() == full // 2
    c.close()


def test_readme_notification_names_are_the_pushed_ones(daemon):
    disc = daemon.call("rpc.discover")
    pushed = {n["topic"]: n["name"] for n in disc["info"]["x-notifications"]}
    rows = _table_after("| topic (`<topic>.subscribe`)")
    documented = {r[0]: r[1] for r in rows}
    assert documented == pushed
    assert pushed["job"] == "job.directive" and pushed["venom"] == "venom.decision"
    assert "{subscription, dropped, data" in README or '"subscription":"s7","dropped":0,"data"' in README


def test_local_cgroup_group_is_named_after_the_local_dir(tmp_path):
    a, b = local_cgroup_group(str(tmp_path / "a")), local_cgroup_group(str(tmp_path / "b"))
    assert re.fullmatch(r"aal-core-local-[0-9a-f]{8}", a) and a != b
    assert local_cgroup_group(str(tmp_path / "a")) == a           # stable for a directory
    assert local_defaults(str(tmp_path / "a")).govern.cgroup_group == a
    cfg_file = tmp_path / "bad.toml"
    for bad in ("../x", "a/b", "", ".."):
        cfg_file.write_text(f'[govern]\ncgroup_group = "{bad}"\n')
        with pytest.raises(ConfigError, match="cgroup_group"):
            load(str(cfg_file))


@pytest.mark.root
def test_a_local_run_as_root_keeps_job_cgroups_in_its_own_group():
    e = CgroupEnforcer("auto")
    if os.geteuid() != 0 or e.mode == "off":
        pytest.skip("needs root and a memory cgroup controller")
    system_group = e.base                             # <root>/aal-core
    base = short_tmpdir()
    d = start_daemon(base=base)
    sleeper = subprocess.Popen(["sleep", "60"])
    job = "l-" + uuid.uuid4().hex[:8]
    try:
        st = d.call("govern.status")
        own = os.path.join(os.path.dirname(system_group), local_cgroup_group(base))
        assert st["cgroup_root"] == own
        with d.client() as c:
            res = c.call("job.submit", {"job_id": job, "profile": "MINIMAL", "pid": sleeper.pid})
            assert res["enforced"] is True and res["cgroup"] == os.path.join(own, job)
            assert os.path.isdir(os.path.join(own, job))
            assert not os.path.exists(os.path.join(system_group, job))
    finally:
        sleeper.kill()
        sleeper.wait()
        d.stop()
    assert not os.path.exists(own)                    # removed when the daemon stops
