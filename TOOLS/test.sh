#!/usr/bin/env bash
# Build aal-core and run the test suite twice: everything (slow system tests
# included) under .venv's Python, then under CPython 3.10 (.venv310, JetPack
# 6's Python) every test not marked slow plus the slow ones marked py310
# (tests/conftest.py names them: the daemon-level tests of the newer units).
# Extra arguments go to pytest in both passes (e.g. -m "not slow" for the
# quick ones, or a test file); a -m of yours replaces the 3.10 selection.
# AAL_TEST_PY310=0 skips the 3.10 pass.  The exit status is the first pass's
# failure, else the second's.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS/setup.sh --test
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "${AAL_TEST_PY310:-1}" = 0 ] \
        || [ "$(.venv/bin/python -c 'import sys; print(sys.version_info[:2] == (3, 10))')" = True ]; then
    exit "$rc"
fi
if [ ! -x .venv310/bin/python ]; then
    echo "test: no .venv310 (TOOLS/setup.sh --test found no CPython 3.10; see its message):" \
         "the 3.10 pass cannot run (AAL_TEST_PY310=0 skips it)" >&2
    exit 1
fi
echo "test: the same suite under $(.venv310/bin/python -V) (.venv310): not slow, or marked py310" >&2
rc310=0
.venv310/bin/python -m pytest -m "not slow or py310" "$@" || rc310=$?
[ "$rc" != 0 ] && exit "$rc"
exit "$rc310"
