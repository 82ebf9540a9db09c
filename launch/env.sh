# Sourced by quickstart.sh and test.sh: create the virtual environment if it is missing and
# (re)install seedjax into it when pyproject.toml changed. $1 = extras ("" or "test").
set -euo pipefail
SEEDJAX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEEDJAX_VENV:-$SEEDJAX_ROOT/.venv}"
extras="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "seedjax: creating the environment in $VENV" >&2
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
hash="$(sha1sum < "$SEEDJAX_ROOT/pyproject.toml" | cut -c1-12)"
stamp="$VENV/.seedjax-$hash-${extras:-base}"
# An install with the test extras also satisfies a plain one.
if [ ! -f "$stamp" ] && [ ! -f "$VENV/.seedjax-$hash-test" ]; then
  echo "seedjax: installing (extras: ${extras:-none}); this takes a few minutes the first time" >&2
  python -m pip install -q --upgrade pip >&2
  spec="$SEEDJAX_ROOT"
  [ -n "$extras" ] && spec="$SEEDJAX_ROOT[$extras]"
  python -m pip install -q -e "$spec" >&2
  touch "$stamp"
fi
cd "$SEEDJAX_ROOT"
