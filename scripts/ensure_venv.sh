# Sourced by run_local.sh and run_tests.sh: makes .venv when there is none and
# (re)installs the package whenever setup.py changed since the last install.
# Needs: PROJECT_ROOT set, and the pip extras to install in VENV_EXTRAS (e.g. "test,report").

VENV_DIR="${INCEPTION_PARITY_VENV:-$PROJECT_ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo "Creating the virtual environment $VENV_DIR" >&2
  "$PYTHON_BIN" -m venv "$VENV_DIR"
fi

stamp="$VENV_DIR/.inception-parity-installed"
wanted="$(sha256sum "$PROJECT_ROOT/setup.py" | cut -d' ' -f1) extras=${VENV_EXTRAS:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "Installing inception-parity${VENV_EXTRAS:+[$VENV_EXTRAS]} into $VENV_DIR" >&2
  "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
  "$VENV_DIR/bin/python" -m pip install --quiet -e "$PROJECT_ROOT${VENV_EXTRAS:+[$VENV_EXTRAS]}"
  echo "$wanted" > "$stamp"
fi

# gRPC between Beam's worker processes must never go through a proxy.
export no_proxy="localhost,127.0.0.1${no_proxy:+,$no_proxy}"
export NO_PROXY="$no_proxy"
