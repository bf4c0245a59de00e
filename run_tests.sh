#!/usr/bin/env bash
# Lints and tests the project: ruff, then pytest. Arguments go to pytest.
set -euo pipefail

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_EXTRAS="test,report"
# shellcheck source=scripts/ensure_venv.sh
source "$PROJECT_ROOT/scripts/ensure_venv.sh"

cd "$PROJECT_ROOT"
"$VENV_DIR/bin/ruff" check pipeline transforms tests benchmarks scripts
"$VENV_DIR/bin/ruff" format --check pipeline transforms tests benchmarks scripts
exec "$VENV_DIR/bin/python" -m pytest "$@"
