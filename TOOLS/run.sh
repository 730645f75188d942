#!/usr/bin/env bash
# Build aal-core and run it in the foreground with local defaults: socket and
# state under ./.aal-core-local, no root, no Jetson, no services needed.
# Extra arguments go to `aal-core run` (e.g. --log-level debug).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS/setup.sh
exec .venv/bin/aal-core run --local .aal-core-local "$@"
