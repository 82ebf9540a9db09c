#!/usr/bin/env bash
# The GPU benchmarks of seedjax in one go; see --help.
set -u

usage() {
  cat <<'EOF'
Usage: bash benchmarks/accelerator.sh [options]

Runs, on a machine whose GPU JAX sees, three parts, each with the repository's own benchmarks:

  1. train_step  seedjax vs PyTorch (diffusers Flux) training step on CUDA, equal work, steps
                 interleaved: the quickstart, large and video presets, float32 (full float32
                 matmuls on both sides) and bfloat16 (benchmarks/train_step.py)
  2. flux_mfu    MFU of a Flux-dev-shaped slice (Flux-dev width, 2 double + 4 single blocks,
                 1,024 image + 512 text tokens) in bfloat16, against the GPU's data-sheet peak,
                 PyTorch alongside (benchmarks/train_step.py --sizes=flux_dev_slice)
  3. paro        PARO / block-sparse kernels (Pallas, triton) against dense cuDNN flash attention
                 (jax.nn.dot_product_attention implementation='cudnn') at 50/30/20% density:
                 benchmarks/attention.py (random balanced masks) and benchmarks/paro_video.py
                 (calibrated PARO plans on video-structured attention)

Every command's output goes to OUT/<part>.log; the tables the benchmarks would append to
BENCHMARKS.md go to OUT/BENCHMARKS.gpu.md instead (SEEDJAX_BENCHMARKS_MD); OUT/env.txt records
the GPU, driver and versions, OUT/summary.txt each command's exit status. A failing command does
not stop the others; the exit status is 1 if any failed.

Options:
  --out DIR        where the outputs go (default: $OUT if set, else ./accelerator_out)
  --parts LIST     comma-separated subset of train_step,flux_mfu,paro (default: all three)
  --quick          fewer sizes, steps and repeats (a smoke run of every part in a few minutes)
  --python PATH    the Python to run (default: .venv/bin/python if present, else python3)
  --max_load X     passed to every benchmark (append only if the 1-minute load average at the
                   start was at most X; default: each benchmark's own, 1.0)
  --timeout S      stop any one command after S seconds (default: no limit)
  --dry-run        print the commands it would run and run nothing (no GPU needed)
  -h, --help       this text

Exit status: 0 all commands succeeded, 1 some command failed, 2 bad arguments, 3 no GPU visible
to JAX (nothing run).
EOF
}

die_usage() { echo "accelerator.sh: $*" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-./accelerator_out}"
PARTS="train_step,flux_mfu,paro"
QUICK=0
DRY=0
PY=""
MAX_LOAD=""
TIMEOUT=""

need_value() { [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || die_usage "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
  arg="$1"
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) DRY=1; shift ;;
    --quick) QUICK=1; shift ;;
    --out|--parts|--python|--max_load|--timeout)
      need_value "$@"; val="$2"; shift 2 ;;
    --out=*|--parts=*|--python=*|--max_load=*|--timeout=*)
      val="${arg#*=}"; arg="${arg%%=*}"; [ -n "$val" ] || die_usage "$arg needs a value (see --help)"; shift ;;
    *) die_usage "unknown argument '$arg' (see --help)" ;;
  esac
  case "$arg" in
    --out) OUT_DIR="$val" ;;
    --parts) PARTS="$val" ;;
    --python) PY="$val" ;;
    --max_load)
      [[ "$val" =~ ^[0-9]+([.][0-9]+)?$|^inf$ ]] || die_usage "--max_load must be a number, got '$val'"
      MAX_LOAD="$val" ;;
    --timeout)
      [[ "$val" =~ ^[1-9][0-9]*$ ]] || die_usage "--timeout must be a positive number of seconds, got '$val'"
      TIMEOUT="$val" ;;
  esac
done

IFS=',' read -r -a PART_LIST <<< "$PARTS"
[ ${#PART_LIST[@]} -gt 0 ] || die_usage "--parts is empty"
for part in "${PART_LIST[@]}"; do
  case "$part" in
    train_step|flux_mfu|paro) ;;
    *) die_usage "unknown part '$part' in --parts (choose from train_step,flux_mfu,paro)" ;;
  esac
done
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi

# ------------------------------------------------------------------ the commands of each part
EXTRA=()
[ -n "$MAX_LOAD" ] && EXTRA+=("--max_load=$MAX_LOAD")

commands_of() {  # one command a line, each a python -m benchmarks... invocation
  local part="$1"
  case "$part" in
    train_step)
      if [ "$QUICK" = 1 ]; then local sizes="quickstart,large" steps=5; else local sizes="quickstart,large,video" steps=20; fi
      echo "-m benchmarks.train_step --sizes=$sizes --steps=$steps --warmup=2 --dtype=float32 --matmul_precision=float32 --torch_device=cuda"
      echo "-m benchmarks.train_step --sizes=$sizes --steps=$steps --warmup=2 --dtype=bfloat16 --torch_device=cuda"
      ;;
    flux_mfu)
      if [ "$QUICK" = 1 ]; then local steps=5; else local steps=20; fi
      echo "-m benchmarks.train_step --sizes=flux_dev_slice --steps=$steps --warmup=2 --dtype=bfloat16 --torch_device=cuda"
      ;;
    paro)
      if [ "$QUICK" = 1 ]; then
        echo "-m benchmarks.attention --seq_lens=4096,16384 --head_dims=128 --densities=1.0,0.5,0.3,0.2 --int8_density=0.3 --impl=triton --dtype=bfloat16 --dense=cudnn --repeats=10 --rounds=2"
        echo "-m benchmarks.paro_video --grid=8,32,32 --heads=8 --head_dim=128 --block=64 --densities=0.5,0.3,0.2 --impl=triton --dense=cudnn --dtype=bfloat16 --repeats=10 --rounds=2"
      else
        echo "-m benchmarks.attention --seq_lens=4096,8192,16384,32768 --head_dims=64,128 --densities=1.0,0.5,0.3,0.2 --int8_density=0.3 --impl=triton --dtype=bfloat16 --dense=cudnn --repeats=20 --rounds=3"
        echo "-m benchmarks.paro_video --grid=16,32,32 --heads=8 --head_dim=128 --block=64 --densities=0.5,0.3,0.2 --impl=triton --dense=cudnn --dtype=bfloat16 --repeats=20 --rounds=3"
      fi
      ;;
  esac
}

describe() {
  case "$1" in
    train_step) echo "seedjax vs PyTorch train step on CUDA (float32 and bfloat16)" ;;
    flux_mfu) echo "MFU of a Flux-dev-shaped slice in bfloat16" ;;
    paro) echo "PARO / block-sparse kernels vs dense cuDNN flash attention at 50/30/20% density" ;;
  esac
}

prefix() {  # what runs before `python`
  [ -n "$TIMEOUT" ] && echo "timeout $TIMEOUT"
  return 0
}

if [ "$DRY" = 1 ]; then
  echo "# dry run: nothing is executed; outputs would go to $OUT_DIR (cwd $ROOT)"
  echo "# env: SEEDJAX_BENCHMARKS_MD=$OUT_DIR/BENCHMARKS.gpu.md"
  n=0
  for part in "${PART_LIST[@]}"; do
    n=$((n + 1))
    echo "# part $n/${#PART_LIST[@]} $part: $(describe "$part") -> $OUT_DIR/$part.log"
    while IFS= read -r cmd; do
      pre="$(prefix)"
      echo "${pre:+$pre }$PY $cmd${EXTRA[*]+ ${EXTRA[*]}}"
    done < <(commands_of "$part")
  done
  exit 0
fi

# ------------------------------------------------------------------ a GPU JAX can see
if ! command -v "$PY" >/dev/null 2>&1 && [ ! -x "$PY" ]; then
  echo "accelerator.sh: no Python at '$PY' (use --python)" >&2; exit 2
fi
backend="$(cd "$ROOT" && "$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null | tail -n 1)"
if [ "$backend" != "gpu" ]; then
  hint=""
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    hint=" (nvidia-smi lists a GPU: install a CUDA jaxlib, e.g. pip install 'jax[cuda12]', and check JAX_PLATFORMS=${JAX_PLATFORMS:-unset})"
  fi
  echo "accelerator.sh: no GPU visible to JAX (backend '${backend:-none}' from $PY)${hint}; nothing run" >&2
  exit 3
fi

mkdir -p "$OUT_DIR" || { echo "accelerator.sh: cannot create $OUT_DIR" >&2; exit 2; }
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
export SEEDJAX_BENCHMARKS_MD="$OUT_DIR/BENCHMARKS.gpu.md"
cd "$ROOT" || exit 2
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uptime: $(uptime)"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'PYEOF' 2>&1
import jax
print("jax", jax.__version__, jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:  # noqa: BLE001
    print("torch: not usable:", e)
PYEOF
} > "$OUT_DIR/env.txt"

status=0
: > "$OUT_DIR/summary.txt"
n=0
for part in "${PART_LIST[@]}"; do
  n=$((n + 1))
  log="$OUT_DIR/$part.log"
  : > "$log"
  echo "== part $n/${#PART_LIST[@]} $part: $(describe "$part")"
  if [ "$part" != "paro" ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "$part: skipped: PyTorch with CUDA is not importable by $PY (the comparison needs it)" | tee -a "$log" "$OUT_DIR/summary.txt" >&2
    status=1
    continue
  fi
  while IFS= read -r cmd; do
    read -r -a words <<< "$cmd"
    pre=()
    [ -n "$TIMEOUT" ] && pre=(timeout "$TIMEOUT")
    echo "\$ $PY $cmd${EXTRA[*]+ ${EXTRA[*]}}" | tee -a "$log"
    start=$(date +%s)
    ${pre[@]+"${pre[@]}"} "$PY" "${words[@]}" ${EXTRA[@]+"${EXTRA[@]}"} >> "$log" 2>&1
    rc=$?
    echo "rc=$rc ($(( $(date +%s) - start )) s): $PY $cmd" | tee -a "$log" "$OUT_DIR/summary.txt"
    [ "$rc" = 0 ] || status=1
  done < <(commands_of "$part")
done
echo "outputs in $OUT_DIR (summary.txt, env.txt, <part>.log, BENCHMARKS.gpu.md)"
exit "$status"
