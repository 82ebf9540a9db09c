#!/usr/bin/env bash
# Create the environment if missing, install seedjax, run the quickstart pipeline on CPU on
# the bundled handwritten digits, and print where the pictures and numbers are.
#   bash launch/quickstart.sh [tiny]        (tiny: the seconds-long CI variant)
source "$(dirname "$0")/env.sh"
variant="${1:-quickstart}"
root="${SEEDJAX_QUICKSTART_DIR:-runs/quickstart}"
[ "$variant" = tiny ] && root="${SEEDJAX_QUICKSTART_DIR:-runs/quickstart_tiny}"
export JAX_PLATFORMS=cpu
start=$(date +%s)
python -m seedjax.pipeline --pipeline="experiments/quickstart/pipeline.py:variant=$variant" --workdir="$root"
echo
echo "seedjax quickstart finished in $(( $(date +%s) - start )) s. Results:"
python -m seedjax.tools.summary "$root"
