"""manifest.json validation: one precise error per problem, naming the file
and the JSON path; nothing can point outside the overlay's directory."""
from __future__ import annotations

import json
import os

import pytest

from aal_core.overlays.manifest import ManifestError, load, parse
from aal_core.overlays.registry import OverlayRegistry

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples", "overlays")

GOOD = {
    "name": "ov", "version": "1.0", "description": "d",
    "entrypoints": {"proc": {"command": ["python3", "main.py"]}},
    "phases": ["OPEN", "CLEAR"],
    "capabilities": {"scan": {"runner": "proc", "class": "analysis", "timeout_s": 2}},
}


def make(tmp_path, manifest, name="ov", files=("main.py",)):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    for f in files:
        (d / f).write_text("print('{}')\n")
    (d / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return str(d)


def problems(tmp_path, manifest, **kw):
    with pytest.raises(ManifestError) as ei:
        load(make(tmp_path, manifest), **kw)
    return ei.value.problems


def with_(**changes):
    m = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        obj = m
        keys = path.split("__")
        for k in keys[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value
    return m


def test_the_shipped_examples_are_valid():
    a = load(os.path.join(EXAMPLES, "abraxas"))
    assert a.phases == ("OPEN", "ALIGN", "CLEAR", "SEAL") and a.deterministic
    assert all(c.cls == "analysis" for c in a.capabilities.values())
    e = load(os.path.join(EXAMPLES, "abraxas_exec"))
    assert e.capabilities["apply"].cls == "exec" and e.capabilities["apply"].phases == ("ASCEND",)
    # A capability without its own phases gets the overlay's, less those its class may not run in.
    assert "ASCEND" not in e.capabilities["scan"].phases
    h = load(os.path.join(EXAMPLES, "abraxas_http"))
    assert h.unix_socket.endswith("abraxas_http/abraxas.sock")


def test_good_manifest(tmp_path):
    m = load(make(tmp_path, GOOD))
    assert m.name == "ov" and m.command == ("python3", "main.py") and len(m.manifest_hash) == 64


def test_not_json(tmp_path):
    p = problems(tmp_path, '{"name": "ov",\n "version": }')
    assert p == ["ov/manifest.json: is not JSON at line 2 column 13: Expecting value"]


def test_not_an_object(tmp_path):
    assert problems(tmp_path, "[1]") == ["ov/manifest.json: must be a JSON object, got an array"]


def test_unknown_keys_at_every_level(tmp_path):
    m = with_(colour="red", capabilities__scan__retries=3, entrypoints__proc__shell=True)
    p = problems(tmp_path, m)
    assert "ov/manifest.json: colour is not a known key (known: capabilities, description, entrypoints, " \
           "name, phases, policy, resources, version)" in p
    assert any(x.startswith("ov/manifest.json: capabilities.scan.retries is not a known key") for x in p)
    assert any(x.startswith("ov/manifest.json: entrypoints.proc.shell is not a known key") for x in p)


@pytest.mark.parametrize("path,value,message", [
    ("capabilities__scan__timeout_s", "soon",
     'capabilities.scan.timeout_s must be a positive number (at most 3600), got "soon"'),
    ("capabilities__scan__timeout_s", -1, "capabilities.scan.timeout_s must be a positive number"),
    ("capabilities__scan__timeout_s", True, "capabilities.scan.timeout_s must be a positive number"),
    ("version", 1, "version must be a string, got 1"),
    ("name", "Bad Name", 'name must be 1-64 characters of a-z 0-9 _ -, got "Bad Name"'),
    ("phases", ["OPEN", "LATER"], 'phases[1] must be one of OPEN, ALIGN, ASCEND, CLEAR, SEAL, got "LATER"'),
    ("phases", [], "phases must be a non-empty array"),
    ("capabilities__scan__class", "root", 'capabilities.scan.class must be one of analysis, exec, got "root"'),
    ("capabilities__scan__runner", "shell", 'capabilities.scan.runner must be one of proc, http, got "shell"'),
    ("capabilities__scan__runner", "http", "capabilities.scan.runner is 'http' but the manifest has no entrypoints.http"),
    ("capabilities__scan__default_profile", "MEM[SOFT=", "capabilities.scan.default_profile is not a profile name"),
    ("capabilities__scan__degradation", {"max_fraction": 2}, "capabilities.scan.degradation.max_fraction must be a number from 0 to 1, got 2"),
    ("policy", {"deterministic": "yes"}, 'policy.deterministic must be a boolean, got "yes"'),
    ("resources", {"prefers_gpu": 1}, "resources.prefers_gpu must be a boolean, got 1"),
    ("entrypoints__proc__command", "python3 main.py", "entrypoints.proc.command must be a non-empty array of non-empty strings"),
    ("capabilities__scan__method", "GET", "capabilities.scan.method applies to http capabilities only"),
])
def test_wrong_types_and_values(tmp_path, path, value, message):
    p = problems(tmp_path, with_(**{path: value}))
    assert any(x == f"ov/manifest.json: {message}" or x.startswith(f"ov/manifest.json: {message}")
               for x in p), p


def test_every_problem_is_reported(tmp_path):
    p = problems(tmp_path, with_(version=1, capabilities__scan__timeout_s="soon", colour=1))
    assert len(p) == 3
    with pytest.raises(ManifestError) as ei:
        load(make(tmp_path, with_(version=1, colour=1)))
    assert "(and 1 more problem(s))" in str(ei.value)


def test_missing_entrypoint(tmp_path):
    assert "ov/manifest.json: entrypoints is required" in problems(tmp_path, with_(entrypoints=KeyError))
    assert "ov/manifest.json: entrypoints must have proc or http (or both)" in problems(tmp_path, with_(entrypoints={}))
    assert "ov/manifest.json: entrypoints.proc.command is required" in \
        problems(tmp_path, with_(entrypoints={"proc": {}}))


def test_missing_required_keys(tmp_path):
    p = problems(tmp_path, {"entrypoints": GOOD["entrypoints"]})
    for key in ("name", "version", "phases", "capabilities"):
        assert f"ov/manifest.json: {key} is required" in p


@pytest.mark.parametrize("command,words", [
    (["../../bin/sh"], "must not contain a .. path component"),
    (["/bin/sh", "-c", "x"], "got the absolute path \"/bin/sh\""),
    (["./missing.py"], "which does not exist in the overlay directory"),
    (["python3", "../secret.py"], "must not contain a .. path component"),
])
def test_paths_outside_the_directory(tmp_path, command, words):
    p = problems(tmp_path, with_(entrypoints__proc__command=command))
    assert any(words in x for x in p), p


def test_symlink_out_of_the_directory(tmp_path):
    outside = tmp_path / "secret.py"
    outside.write_text("x")
    d = make(tmp_path, with_(entrypoints__proc__command=["python3", "link.py"]))
    os.symlink(str(outside), os.path.join(d, "link.py"))
    with pytest.raises(ManifestError) as ei:
        load(d)
    assert any("points outside the overlay directory (a symlink out?)" in x for x in ei.value.problems)
    # The registry refuses the directory as a whole for it, naming the link.
    reg = OverlayRegistry(str(tmp_path / "installed"), str(tmp_path / "state"))
    with pytest.raises(ManifestError) as ei:
        reg.install(d)
    assert ei.value.problems == [f"ov/link.py: is a symlink out of the overlay directory (to {outside})"]


def test_manifest_itself_a_symlink_is_refused(tmp_path):
    d = tmp_path / "ov"
    d.mkdir()
    (tmp_path / "real.json").write_text(json.dumps(GOOD))
    os.symlink(str(tmp_path / "real.json"), str(d / "manifest.json"))
    with pytest.raises(ManifestError) as ei:
        load(str(d))
    assert "a symlink?" in str(ei.value)


def test_phase_rules(tmp_path):
    m = with_(phases=["OPEN", "ASCEND"])
    assert "ov/manifest.json: phases includes ASCEND, which needs a capability of class exec" in problems(tmp_path, m)
    m = with_(capabilities__scan__phases=["ASCEND"], phases=["OPEN", "ASCEND"])
    assert any("names ASCEND, which admits only capabilities of class exec" in x for x in problems(tmp_path, m))
    m = with_(capabilities__scan__phases=["SEAL"])
    assert any("names SEAL, which the overlay's phases do not include" in x for x in problems(tmp_path, m))


def test_http_base_url_rules(tmp_path):
    base = with_(entrypoints={"http": {"base_url": "http://127.0.0.1:8080"}}, capabilities__scan__runner="http")
    assert any("TCP loopback is not allowed" in x for x in problems(tmp_path, base))
    assert load(make(tmp_path, base), allow_tcp=True).base_url == "http://127.0.0.1:8080"
    remote = with_(entrypoints={"http": {"base_url": "http://example.com"}}, capabilities__scan__runner="http")
    assert any("must be a Unix socket or loopback" in x for x in problems(tmp_path, remote, allow_tcp=True))
    esc = with_(entrypoints={"http": {"base_url": "unix:../x.sock"}}, capabilities__scan__runner="http")
    assert any("the socket must be inside the overlay directory" in x for x in problems(tmp_path, esc))


def test_directory_name_must_match(tmp_path):
    d = make(tmp_path, GOOD, name="other")
    with pytest.raises(ManifestError) as ei:
        load(d)
    assert ei.value.problems == ["other/manifest.json: name is 'ov' but the directory is named 'other'"]
    assert load(d, check_dirname=False).name == "ov"


def test_parse_is_pure_without_a_root():
    m = parse(json.dumps(GOOD).encode(), "x/manifest.json")
    assert m.capabilities["scan"].timeout_s == 2.0


def test_registry_state_is_written_atomically_over_a_crashs_leftover(tmp_path):
    """save_state goes through the ledger store's create_atomic: a temporary
    file a crash left (with a loose mode and garbage) is replaced, the state
    file is whole and 0600, and no temporary file stays."""
    state = tmp_path / "state"
    state.mkdir()
    reg = OverlayRegistry(str(tmp_path / "installed"), str(state))
    leftover = reg.state_path + ".tmp"
    with open(leftover, "w") as fh:
        fh.write("{half")
    os.chmod(leftover, 0o666)
    reg.enabled = {"ov": True, "other": False}
    reg.save_state()
    assert not os.path.exists(leftover)
    assert json.loads(open(reg.state_path).read()) == {"enabled": {"other": False, "ov": True}}
    assert os.stat(reg.state_path).st_mode & 0o777 == 0o600
    again = OverlayRegistry(str(tmp_path / "installed"), str(state))
    again.load_state()
    assert again.enabled == {"ov": True, "other": False}
