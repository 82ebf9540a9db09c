#!/usr/bin/env bash
# Cloud TPU VM (single or multi-host slice): run the same command on every worker.
#   bash launch/tpu_vm.sh TPU_NAME ZONE experiments/seedream/pretrain.py gs://bucket/runs/pretrain [--config.k=v ...]
# JAX discovers the slice topology and coordinator from the TPU metadata server, so
# jax.distributed.initialize() needs no arguments. The workdir should be on GCS so every
# worker reads and writes the same checkpoints.
set -euo pipefail
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
extra="$*"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  cd ~/seedjax || git clone \${SEEDJAX_REPO:?set SEEDJAX_REPO} ~/seedjax && cd ~/seedjax
  python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . 'jax[tpu]'
  python -m seedjax.main --config=$config --workdir=$workdir --config.mesh.data=1 --config.mesh.fsdp=-1 $extra
"
