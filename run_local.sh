#!/usr/bin/env bash
# Runs the pipeline on the local Beam runner.
#   ./run_local.sh                      the shipped sample photos, with --models fixture
#   ./run_local.sh --input DIR --output DIR [flags]   any flags of `inception-parity run`
set -euo pipefail

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_EXTRAS="report,read"
# shellcheck source=scripts/ensure_venv.sh
source "$PROJECT_ROOT/scripts/ensure_venv.sh"

if [ "$#" -eq 0 ]; then
  set -- --input "$PROJECT_ROOT/samples/photos" --output "$PROJECT_ROOT/output" --models fixture
fi

# The in-process FnApiRunner works offline; DirectRunner would first try to download
# the Prism runner. A --runner given on the command line comes later and wins.
exec "$VENV_DIR/bin/inception-parity" run --runner=FnApiRunner "$@"
