# Sourced by scripts/demo.sh and scripts/test.sh: a project-local virtual environment with runlens installed.
# torch is pinned to the CPU wheel this machine kind keeps on disk (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${RUNLENS_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.runlens-installed-$1"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$ROOT[$1]"
  touch "$stamp"
fi
cd "$ROOT"
