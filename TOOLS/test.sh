#!/usr/bin/env bash
# Build aal-core and run the whole test suite (slow system tests included).
# Extra arguments go to pytest (e.g. -m "not slow" for the quick ones).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS/setup.sh --test
exec .venv/bin/python -m pytest "$@"
