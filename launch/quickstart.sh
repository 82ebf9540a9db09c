#!/usr/bin/env bash
# Create the environment if missing, install seedjax, train on the bundled handwritten digits
# on CPU, and print where the sample grid and the numbers (prompt accuracy) are.
#   bash launch/quickstart.sh          one stage: text-to-image pretraining, a few minutes
#   bash launch/quickstart.sh full     pretrain -> SFT -> reward model -> RLHF, about half an hour
#   bash launch/quickstart.sh tiny     the full chain in seconds-long variants (CI)
#   bash launch/quickstart.sh video    text-to-video on moving digits (experiments/seedance/t2v.py)
#   add --dry_run to print the plan and exit without installing or training
# Results go to runs/quickstart, runs/quickstart_full, runs/quickstart_tiny or runs/quickstart_video
# (or $SEEDJAX_QUICKSTART_DIR). The stages and their expected durations (2 idle CPU cores;
# longer on a busy machine) mirror experiments/quickstart/pipeline.py.
set -euo pipefail
usage="usage: bash launch/quickstart.sh [full|tiny|video] [--dry_run]"
variant="" dry_run=0
for a in "$@"; do
  case "$a" in
    -h|--help) echo "$usage"; sed -n '2,11p' "$0" | cut -c3-; exit 0 ;;
    --dry_run) dry_run=1 ;;
    full|tiny|video) [ -z "$variant" ] || { echo "quickstart.sh: one variant at most; $usage" >&2; exit 2; }; variant="$a" ;;
    *) echo "quickstart.sh: unknown argument '$a'; $usage" >&2; exit 2 ;;
  esac
done
case "$variant" in
  "")   pipeline=fast; root_default=runs/quickstart
        stages=(pretrain); about=("about 6 min") ;;
  full) pipeline=full; root_default=runs/quickstart_full
        stages=(pretrain sft reward rlhf); about=("about 7 min" "about 3 min" "about 6 min" "about 2 min") ;;
  tiny) pipeline=tiny; root_default=runs/quickstart_tiny
        stages=(pretrain sft reward rlhf); about=("about 1 min" "about 1 min" "about 1 min" "about 1 min") ;;
  video) pipeline=video; root_default=runs/quickstart_video
        stages=(t2v); about=("about 25 min") ;;
esac
root="${SEEDJAX_QUICKSTART_DIR:-$root_default}"
qs_pipeline="experiments/quickstart/pipeline.py:variant=$pipeline"  # (env.sh sets its own $spec)
n=${#stages[@]}
if [ "$dry_run" = 1 ]; then
  echo "quickstart ${variant:-default}: $qs_pipeline -> $root"
  for i in "${!stages[@]}"; do echo "[$((i + 1))/$n] ${stages[$i]}: ${about[$i]} on 2 CPU cores"; done
  exit 0
fi

start=$(date +%s)
source "$(dirname "$0")/env.sh" ""  # no extras (not this script's arguments)
export JAX_PLATFORMS=cpu
# An absolute workdir (env.sh moved to the repository root): orbax refuses relative checkpoint paths.
case "$root" in /*|*://*) ;; *) root="$PWD/$root" ;; esac
timings=""
for i in "${!stages[@]}"; do
  stage="${stages[$i]}"
  echo "[$((i + 1))/$n] $stage: ${about[$i]} on 2 CPU cores (started $(date +%H:%M:%S))" >&2
  t0=$(date +%s)
  python -m seedjax.pipeline --pipeline="$qs_pipeline" --workdir="$root" --only="$stage"
  t=$(( $(date +%s) - t0 ))
  echo "[$((i + 1))/$n] $stage: done in $t s" >&2
  timings="$timings${timings:+, }\"$stage\": $t"
done
# Each --only run wrote its own stage's time; keep all of them for the summary.
echo "{$timings}" > "$root/pipeline_timings.json"
echo
echo "seedjax quickstart ($(basename "$root")) finished in $(( $(date +%s) - start )) s, install included. Results:"
python -m seedjax.tools.summary "$root"
