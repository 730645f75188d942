"""The ledger core's OpenSSL 1.1.1 path (JetPack 5 ships 1.1.1), compiled and
run against a real OpenSSL 1.1.1.

ext/includes/aal_ossl3.h maps the OpenSSL 3 calls (EVP_MD_fetch,
EVP_DigestInit_ex2) onto 1.1.1's; the daemon itself is built against this
machine's OpenSSL 3.  Here ext/ledger_core.pyx is compiled against Debian 11's
libssl-dev 1.1.1w (unpacked under .venv by TOOLS/setup.sh --test through
TOOLS/fetch_openssl111.sh, never installed) and linked to its libcrypto.so.1.1
with an rpath.  A subprocess imports that build (only it: the host's OpenSSL 3
is never loaded there) and runs every function the module exposes on fixed
inputs; the answers are checked here against hashlib and the pure-Python
reference aal_core.ledger._ref.
"""
from __future__ import annotations

import glob
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aal_core.clock import ManualClock
from aal_core.ledger import Ledger, _ref

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "ext"
OSSL111 = Path(sys.prefix) / "openssl-1.1.1"

pytestmark = pytest.mark.slow   # one C compile, ~10-30 s

BUILD = r"""
import sys
from setuptools import Extension, setup
from Cython.Build import cythonize
ext, includes, libdir, out = sys.argv[1:5]
e = Extension("aal_core.ledger_core", [ext + "/ledger_core.pyx"],
              include_dirs=includes.split(":") + [ext, ext + "/includes"],
              library_dirs=[libdir], runtime_library_dirs=[libdir], libraries=["crypto"],
              # A call the 1.1.1 headers do not declare must stop the build.
              extra_compile_args=["-O2", "-Werror=implicit-function-declaration",
                                  "-Werror=incompatible-pointer-types"])
setup(name="ledger-core-openssl111", script_args=["-q", "build_ext", "--build-lib", out + "/lib",
                                                   "--build-temp", out + "/tmp"],
      ext_modules=cythonize([e], include_path=[ext, ext + "/includes"], build_dir=out + "/c",
                            language_level=3, quiet=True,
                            # as setup.py (not the debug build)
                            compiler_directives={"boundscheck": False, "wraparound": False,
                                                 "cdivision": True, "initializedcheck": False}))
"""

# Runs in the subprocess: only the 1.1.1 build of aal_core.ledger_core.
RUN = r"""
import pickle, sys
sys.path.insert(0, sys.argv[1])
import aal_core.ledger_core as core
assert core.__file__.startswith(sys.argv[1]), core.__file__
inp = pickle.load(open(sys.argv[2], "rb"))
out = {"file": core.__file__, "version": core.openssl_version()}
out["sha3"] = [core.sha3_256(d) for d in inp["data"]]
out["leaf"] = [core.leaf_hash(d) for d in inp["data"]]
out["node"] = [core.node_hash(a, b) for a, b in inp["pairs"]]
hs = inp["hashes"]
t = core.MerkleTree()
t.extend(b"".join(hs[:21]))
for h in hs[21:]:
    t.append(h)
n = len(hs)
out["roots"] = [t.root(m) for m in range(n + 1)]
out["leaves"] = [t.leaf(i) for i in range(n)]
out["naive"] = core.naive_root(b"".join(hs))
out["incl"] = {(i, m): t.inclusion_proof(i, m) for i, m in inp["incl"]}
out["cons"] = {(a, b): t.consistency_proof(a, b) for a, b in inp["cons"]}
out["verify_incl"] = [core.verify_inclusion(hs[i], i, m, p, r) for i, m, p, r in inp["verify_incl"]]
out["verify_cons"] = [core.verify_consistency(a, b, ra, rb, p) for a, b, ra, rb, p in inp["verify_cons"]]
out["scan"] = []
for body in inp["bodies"]:
    for threads, block in ((1, 1024), (3, 4)):
        tree = core.MerkleTree()
        res = core.scan(body, 8, 0, b"\x00" * 32, tree, True, threads, block)
        out["scan"].append((res, tree.root()))
out["frame"] = [core.frame(p, h) for p, h in inp["frames"]]
out["libcrypto"] = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libcrypto" in line})
pickle.dump(out, open(sys.argv[3], "wb"))
"""


def _openssl111() -> tuple[list[str], str]:
    """Include dirs and library dir of the unpacked 1.1.1; fail (not skip)
    where it is missing: TOOLS/setup.sh --test puts it there."""
    hint = "run TOOLS/setup.sh --test (TOOLS/fetch_openssl111.sh unpacks Debian 11's libssl-dev there)"
    opensslv = OSSL111 / "usr/include/openssl/opensslv.h"
    libs = glob.glob(str(OSSL111 / "usr/lib/*/libcrypto.so.1.1"))
    confs = glob.glob(str(OSSL111 / "usr/include/*/openssl/opensslconf.h"))
    if not opensslv.is_file() or not libs or not confs:
        pytest.fail(f"no OpenSSL 1.1.1 headers and libcrypto under {OSSL111}: {hint}")
    m = re.search(r"#\s*define\s+OPENSSL_VERSION_NUMBER\s+0x([0-9a-fA-F]+)L", opensslv.read_text())
    assert m and m.group(1).lower().startswith("10101"), f"{opensslv} is not OpenSSL 1.1.1: {m and m.group(0)}"
    includes = [str(OSSL111 / "usr/include")] + [str(Path(c).parent.parent) for c in confs]
    return includes, os.path.dirname(libs[0])


def _inputs() -> dict:
    rnd = random.Random(1111)
    data = [b"", b"abc", b"\x00", bytes(range(256)) * 16, rnd.randbytes(4095), rnd.randbytes(4096),
            rnd.randbytes(70_000)]   # >= 4096: hashed without the GIL
    hashes = [_ref.sha3_256(b"entry %d" % i) for i in range(37)]
    n = len(hashes)
    ref = _ref.MerkleTree()
    ref.extend(b"".join(hashes))
    incl = [(0, 1), (0, n), (5, 6), (20, 21), (21, 33), (n - 1, n), (13, 32)]
    cons = [(1, 1), (1, n), (3, 7), (8, 16), (16, 21), (20, n), (n - 1, n)]
    verify_incl, verify_cons = [], []
    for i, m in incl:
        p, r = ref.inclusion_proof(i, m), ref.root(m)
        verify_incl.append((i, m, p, r))
        if p:
            verify_incl.append((i, m, [p[0][:31] + bytes([p[0][31] ^ 1])] + p[1:], r))   # tampered
        verify_incl.append((i, m, p, _ref.sha3_256(b"not the root")))
    for a, b in cons:
        p, ra, rb = ref.consistency_proof(a, b), ref.root(a), ref.root(b)
        verify_cons.append((a, b, ra, rb, p))
        verify_cons.append((a, b, ra, _ref.sha3_256(b"not the root"), p))
    led = Ledger.memory(clock=ManualClock())
    led.append_many([{"i": i, "s": "é" * (i % 5), "x": i / 7} for i in range(40)])
    good = bytes(led.store.contents())
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x04
    bodies = [good, bytes(flipped), good[:len(good) - 20], good + bytes(100)]
    frames = [(b'{"a":1}', hashes[0]), (b"", hashes[1])]
    pairs = [(hashes[i], hashes[i + 1]) for i in range(0, 8, 2)]
    return {"data": data, "hashes": hashes, "incl": incl, "cons": cons, "verify_incl": verify_incl,
            "verify_cons": verify_cons, "bodies": bodies, "frames": frames, "pairs": pairs}


@pytest.fixture(scope="module")
def openssl111_run(tmp_path_factory) -> tuple[dict, dict]:
    """Build once, run once: (inputs, the 1.1.1 build's answers)."""
    includes, libdir = _openssl111()
    out = tmp_path_factory.mktemp("ossl111")
    r = subprocess.run([sys.executable, "-c", BUILD, str(EXT), ":".join(includes), libdir, str(out)],
                       cwd=out, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"ledger_core.pyx does not build against OpenSSL 1.1.1:\n{r.stdout}\n{r.stderr}"
    (out / "lib/aal_core/__init__.py").write_text("")
    inp = _inputs()
    with open(out / "in.pickle", "wb") as fh:
        pickle.dump(inp, fh)
    # -I: no user site, no PYTHONPATH; the import path starts at our build.
    r = subprocess.run([sys.executable, "-I", "-c", RUN, str(out / "lib"), str(out / "in.pickle"),
                        str(out / "out.pickle")], cwd=out, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"the OpenSSL 1.1.1 build of ledger_core failed to run:\n{r.stderr}"
    with open(out / "out.pickle", "rb") as fh:
        return inp, pickle.load(fh)


def test_it_is_built_against_and_runs_on_openssl_111(openssl111_run):
    _, got = openssl111_run
    assert got["version"].startswith("OpenSSL 1.1.1"), got["version"]
    # The process hashes with the unpacked 1.1.1, and with no other libcrypto.
    assert got["libcrypto"] and all(p.startswith(str(OSSL111)) and p.endswith("libcrypto.so.1.1")
                                    for p in got["libcrypto"]), got["libcrypto"]


def test_sha3_leaf_and_node_hashes_match_hashlib(openssl111_run):
    import hashlib
    inp, got = openssl111_run
    assert got["sha3"] == [hashlib.sha3_256(d).digest() for d in inp["data"]]
    assert got["sha3"][1].hex() == "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
    assert got["leaf"] == [_ref.leaf_hash(d) for d in inp["data"]]
    assert got["node"] == [_ref.node_hash(a, b) for a, b in inp["pairs"]]


def test_merkle_tree_and_proofs_match_the_reference(openssl111_run):
    inp, got = openssl111_run
    hs = inp["hashes"]
    ref = _ref.MerkleTree()
    ref.extend(b"".join(hs))
    assert got["roots"] == [ref.root(m) for m in range(len(hs) + 1)]
    assert got["leaves"] == [ref.leaf(i) for i in range(len(hs))]
    assert got["naive"] == _ref.naive_root(b"".join(hs)) == ref.root()
    assert got["incl"] == {(i, m): ref.inclusion_proof(i, m) for i, m in inp["incl"]}
    assert got["cons"] == {(a, b): ref.consistency_proof(a, b) for a, b in inp["cons"]}
    want_incl = [_ref.verify_inclusion(hs[i], i, m, p, r) for i, m, p, r in inp["verify_incl"]]
    want_cons = [_ref.verify_consistency(a, b, ra, rb, p) for a, b, ra, rb, p in inp["verify_cons"]]
    assert got["verify_incl"] == want_incl and True in want_incl and False in want_incl
    assert got["verify_cons"] == want_cons and True in want_cons and False in want_cons


def test_scan_and_frame_match_the_reference(openssl111_run):
    inp, got = openssl111_run
    want = []
    for body in inp["bodies"]:
        tree = _ref.MerkleTree()
        res = _ref.scan(body, 8, 0, b"\x00" * 32, tree)
        want += [(res, tree.root())] * 2      # one thread, then three
    assert got["scan"] == want
    statuses = {res[0] for res, _ in want}
    assert statuses == {_ref.SCAN_OK, _ref.SCAN_TORN, _ref.SCAN_CORRUPT}, statuses
    assert got["frame"] == [_ref.frame(p, h) for p, h in inp["frames"]]
