# The seedjax environment: create the virtual environment if it is missing and (re)install
# seedjax into it when pyproject.toml or the extras changed, then activate it.
#   source launch/env.sh [EXTRAS]                  (quickstart.sh, test.sh: "" or "test")
#   SEEDJAX_EXTRAS=cuda12 bash launch/env.sh       (once, on a login node: GPU jax for launch/slurm.sbatch)
#   SEEDJAX_EXTRAS=tpu,gcs bash launch/env.sh      (on every TPU VM worker: launch/tpu_vm.sh does this)
# EXTRAS and $SEEDJAX_EXTRAS are comma-separated pyproject extras (test, cuda12, tpu, gcs, ...),
# merged. $SEEDJAX_VENV moves the environment (default: .venv in the repository).
set -euo pipefail
SEEDJAX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEEDJAX_VENV:-$SEEDJAX_ROOT/.venv}"
extras="$(printf '%s,%s' "${1:-}" "${SEEDJAX_EXTRAS:-}" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "seedjax: creating the environment in $VENV" >&2
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
hash="$(sha1sum < "$SEEDJAX_ROOT/pyproject.toml" | cut -c1-12)"
stamp="$VENV/.seedjax-$hash-${extras:-base}"
# Any install of this pyproject.toml (whatever its extras) also satisfies a plain one.
if [ ! -f "$stamp" ] && { [ -n "$extras" ] || ! compgen -G "$VENV/.seedjax-$hash-*" > /dev/null; }; then
  echo "seedjax: installing (extras: ${extras:-none}); this takes a few minutes the first time" >&2
  python -m pip install -q --upgrade pip >&2
  spec="$SEEDJAX_ROOT"
  [ -n "$extras" ] && spec="$SEEDJAX_ROOT[$extras]"
  python -m pip install -q -e "$spec" >&2
  touch "$stamp"
fi
cd "$SEEDJAX_ROOT"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced: say how to use what was installed
  echo "seedjax: ready (extras: ${extras:-none}); activate with: source $VENV/bin/activate" >&2
fi
