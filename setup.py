"""Build: compile ext/*.pyx into aal_core submodules and generate the
protobuf bindings from contracts/ into aal_core.v1.

Every ext/<name>.pyx becomes the extension module aal_core.<name>; add a file,
get a module.  Flags are portable (no -march), so the same build works on
x86_64 and on aarch64 (Jetson).  `AAL_CYTHON_ANNOTATE=1` writes the HTML
annotation next to each .pyx; `AAL_CYTHON_DEBUG=1` keeps bounds checks on.
"""
import glob
import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

HERE = os.path.dirname(os.path.abspath(__file__))

# Extra C libraries per extension module (by ext/<name>.pyx); the rest link
# none.  The ledger hashes with OpenSSL's libcrypto (README "Ledger"), and the
# signing key (aal_core.keys) signs with it.
LIBRARIES = {"ledger_core": ["crypto"], "ossl_ed25519": ["crypto"]}
# Extra compiler flags per extension module.  lsq (the trend's least squares)
# must compute exactly what its pure-Python reference does: no fused
# multiply-add contraction (aarch64 has FMA and GCC would contract a*b+c);
# rpc_fast.round3 relies on x*1000 being rounded on its own.
CFLAGS = {"lsq": ["-ffp-contract=off"], "rpc_fast": ["-ffp-contract=off"]}
CONTRACTS = os.path.join(HERE, "contracts")
PROTO_OUT = os.path.join(HERE, "daemon", "v1")


def generate_protos():
    """Run protoc (from grpcio-tools, a build dependency) over contracts/."""
    from grpc_tools import protoc  # build dependency; pinned in pyproject
    import grpc_tools

    protos = sorted(glob.glob(os.path.join(CONTRACTS, "aal_core", "v1", "*.proto")))
    if not protos:
        raise SystemExit("no .proto files under contracts/aal_core/v1")
    os.makedirs(PROTO_OUT, exist_ok=True)
    # protoc writes aal_core/v1/x_pb2.py under --python_out; point it at a
    # staging dir and move the files into the daemon/ package folder.
    stage = os.path.join(HERE, "build", "proto")
    os.makedirs(stage, exist_ok=True)
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{CONTRACTS}", f"-I{include}", f"--python_out={stage}", f"--pyi_out={stage}"]
    if protoc.main(args + protos) != 0:
        raise SystemExit("protoc failed on contracts/")
    gen = os.path.join(stage, "aal_core", "v1")
    for name in os.listdir(gen):
        os.replace(os.path.join(gen, name), os.path.join(PROTO_OUT, name))
    with open(os.path.join(PROTO_OUT, "__init__.py"), "w") as fh:
        fh.write('"""Generated from contracts/aal_core/v1 at build time. Do not edit."""\n')


class BuildPy(build_py):
    def run(self):
        generate_protos()
        super().run()


class EggInfo(egg_info):
    def run(self):
        generate_protos()
        super().run()


def check_libcrypto():
    """Fail the build, clearly, where OpenSSL's headers or libcrypto are
    missing (the compiler's own error comes much later and says less)."""
    import tempfile
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CompileError, LinkError
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write("#include <openssl/evp.h>\n"
                     "int main(void) { EVP_MD_CTX *c = EVP_MD_CTX_new(); EVP_MD_CTX_free(c);"
                     " return EVP_sha3_256() == 0; }\n")
        try:
            objs = cc.compile([src], output_dir=tmp)
            cc.link_executable(objs, os.path.join(tmp, "probe"), libraries=["crypto"])
        except (CompileError, LinkError):
            raise SystemExit(
                "aal-core build: OpenSSL's libcrypto development files (openssl/evp.h, "
                "libcrypto.so, OpenSSL >= 1.1.1) were not found; the ledger hashes SHA3-256 with "
                "them. Install them (Debian/Ubuntu/JetPack: apt-get install libssl-dev) and build "
                "again.") from None


def _ext_deps(tree, pyx: str) -> set:
    """The files in this checkout that the C of ext/<name>.pyx is made from:
    what Cython's own dependency tree finds (cimported .pxd, included .pxi),
    plus what it misses: the module's own ext/aal_core/<name>.pxd (Cython
    finds it by the module's full name, its tree only next to the .pyx) with
    what that cimports, and the local headers of `cdef extern from` blocks."""
    roots = [pyx]
    own = os.path.join("ext", "aal_core", os.path.basename(pyx)[:-4] + ".pxd")
    if os.path.exists(own):
        roots.append(own)
    files = set()
    for root in roots:
        files |= tree.all_dependencies(root)
    for f in list(files):
        for header in tree.parse_dependencies(f)[2]:
            for d in (os.path.dirname(f), "ext", os.path.join("ext", "includes")):
                h = os.path.join(d, header.strip("<>"))
                if os.path.isfile(h):
                    files.add(h)
                    break
    here = HERE + os.sep
    return {os.path.relpath(f, HERE) for f in map(os.path.abspath, files) if f.startswith(here)}


def _drop_stale_c(tree, pyxs, options: dict) -> dict:
    """Remove every ext/<name>.c older than one of its sources (so cythonize
    regenerates it) and, where the Cython version or the directives differ
    from the last build's (build/cython-options.json), every one; return the
    sources per .pyx (the extension's `depends`, so setuptools recompiles
    when a header changes and the .c does not).  A `git pull` or a merge that
    changes a .pxd or a header then builds what the sources say."""
    import json

    stamp = os.path.join(HERE, "build", "cython-options.json")
    try:
        with open(stamp) as fh:
            same = json.load(fh) == options
    except (OSError, ValueError):
        same = False
    deps = {}
    for pyx in pyxs:
        deps[pyx] = sorted(_ext_deps(tree, pyx))
        c = pyx[:-4] + ".c"
        if not os.path.exists(c):
            continue
        # a header changes what the compiler makes of the .c, not the .c
        newest = max((d for d in deps[pyx] if not d.endswith(".h")), key=os.path.getmtime)
        if not same or os.path.getmtime(c) < os.path.getmtime(newest):
            why = "the Cython version or directives changed" if not same else f"{newest} is newer"
            print(f"aal-core build: regenerating {c} ({why})", file=sys.stderr)
            os.unlink(c)
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp, "w") as fh:
        json.dump(options, fh, sort_keys=True)
    return deps


def extensions():
    import Cython
    from Cython.Build import cythonize
    from Cython.Build.Dependencies import create_dependency_tree
    from Cython.Compiler.Main import Context

    debug = os.environ.get("AAL_CYTHON_DEBUG") == "1"
    include_path = ["ext", "ext/includes"]
    directives = {
        "boundscheck": debug,
        "wraparound": debug,
        "cdivision": True,
        "initializedcheck": debug,
    }
    annotate = os.environ.get("AAL_CYTHON_ANNOTATE") == "1"
    pyxs = sorted(glob.glob(os.path.join("ext", "*.pyx")))
    if any("crypto" in LIBRARIES.get(os.path.basename(p)[:-4], ()) for p in pyxs):
        check_libcrypto()
    tree = create_dependency_tree(Context(include_path, directives, language_level=3))
    deps = _drop_stale_c(tree, pyxs, {"cython": Cython.__version__, "directives": directives,
                                      "annotate": annotate, "language_level": 3})
    mods = []
    for pyx in pyxs:
        name = os.path.splitext(os.path.basename(pyx))[0]
        mods.append(
            Extension(
                f"aal_core.{name}",
                [pyx],
                include_dirs=include_path,
                extra_compile_args=["-O2"] + CFLAGS.get(name, []),
                libraries=LIBRARIES.get(name, []),
                depends=[d for d in deps[pyx] if d != pyx],
            )
        )
    return cythonize(
        mods,
        include_path=include_path,
        annotate=annotate,
        language_level=3,
        compiler_directives=directives,
    )


setup(
    # daemon/ is the aal_core package; every sub-folder with an __init__.py
    # is a subpackage.  aal_core.v1 is generated by protoc (see above).
    # aal_core.data holds the bundled tegrastats recording and its replay script.
    packages=["aal_core", "aal_core.v1", "aal_core.data"]
    + [f"aal_core.{p}" for p in find_packages("daemon") if p != "v1"],
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPy, "egg_info": EggInfo},
)
