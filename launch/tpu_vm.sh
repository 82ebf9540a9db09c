#!/usr/bin/env bash
# Cloud TPU VM (one host or a multi-host slice): install seedjax and run the same command on every worker.
#   gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b --accelerator-type=v4-32 --version=tpu-ubuntu2204-base
#   SEEDJAX_REPO=https://github.com/YOU/seedjax.git bash launch/tpu_vm.sh my-tpu us-central2-b experiments/custom/folder_pretrain.py:variant=base gs://my-bucket/runs/mine --config.data.path=/mnt/disks/data/images
# Arguments: TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]. Each worker clones
# $SEEDJAX_REPO into ~/seedjax if it is missing and installs it with the `tpu` and `gcs` extras
# (launch/env.sh: jax[tpu], gcsfs; again only when pyproject.toml changed). The example trains
# the cluster-sized MMDiT (`base`) on your own captioned images, which every worker must see
# at the same path (a persistent disk attached read-only to all workers, or a gcsfuse mount);
# the workdir is on GCS so every worker reads and writes the same checkpoints.
# JAX discovers the slice topology and coordinator from the TPU metadata server.
#
# Preemption: SIGTERM (maintenance, preemption) makes every worker save a checkpoint and exit
# 143 (config.preemption_exit_code, passed below). Each worker prints `seedjax-exit: HOST CODE`;
# when a worker was preempted or the connection was lost, this script waits for the TPU to be
# READY again and reruns the same command, which resumes from the newest checkpoint, at most
# $SEEDJAX_MAX_RESTARTS times (default 3). Exit code: 0 when every worker finished (done.json in
# WORKDIR), 2 for a bad config (nothing is retried), 143 when still preempted after the last
# try or the TPU is gone (recreate it and rerun this command to resume), else the failing code.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
preempted=${SEEDJAX_PREEMPTION_EXIT_CODE:-143}
max_restarts=${SEEDJAX_MAX_RESTARTS:-3}
poll_seconds=${SEEDJAX_POLL_SECONDS:-30}
q() { printf '%q' "$1"; }
overrides=""
for arg in "$@"; do overrides+=" $(q "$arg")"; done

remote="set -e
if [ ! -d ~/seedjax ]; then
  [ -n $(q "${SEEDJAX_REPO:-}") ] || { echo 'seedjax: no ~/seedjax on this worker; set SEEDJAX_REPO to clone it'; echo \"seedjax-exit: \$(hostname) 2\"; exit 2; }
  git clone -q $(q "${SEEDJAX_REPO:-}") ~/seedjax
fi
cd ~/seedjax
SEEDJAX_EXTRAS=tpu,gcs bash launch/env.sh || { echo \"seedjax-exit: \$(hostname) 1\"; exit 1; }
source .venv/bin/activate
export SEEDJAX_DISTRIBUTED=1  # jax.distributed.initialize() on every worker; JAX reads the slice from TPU metadata
set +e
python -m seedjax.main --config=$(q "$config") --workdir=$(q "$workdir") --config.preemption_exit_code=$preempted$overrides
rc=\$?
echo \"seedjax-exit: \$(hostname) \$rc\"
exit \$rc"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
attempt=0
while :; do
  set +e
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote" 2>&1 | tee "$log"
  set -e
  codes="$(sed -n 's/^.*seedjax-exit: [^ ]* \([0-9][0-9]*\).*$/\1/p' "$log" | sort -u | paste -sd' ' -)"
  if [ "$codes" = "0" ]; then
    echo "seedjax: every worker exited 0; results in $workdir" >&2
    exit 0
  fi
  for code in $codes; do
    if [ "$code" != 0 ] && [ "$code" != "$preempted" ]; then
      echo "seedjax: a worker failed with exit code $code (worker codes: $codes); see the output above" >&2
      exit "$code"
    fi
  done
  # Preempted (or the connection to a worker was lost): resume when the TPU is back.
  if [ "$attempt" -ge "$max_restarts" ]; then
    echo "seedjax: not finished after $((attempt + 1)) tries (worker codes: ${codes:-none}); rerun this command to resume from the newest checkpoint in $workdir" >&2
    exit "$preempted"
  fi
  attempt=$((attempt + 1))
  while :; do
    state="$(gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" --format='value(state)' || echo UNKNOWN)"
    case "$state" in
      READY) break ;;
      PREEMPTED|TERMINATED|STOPPED|UNKNOWN|"")
        echo "seedjax: the TPU $tpu is ${state:-gone}; recreate or start it, then rerun this command to resume from $workdir" >&2
        exit "$preempted" ;;
      *) echo "seedjax: waiting for the TPU $tpu ($state)" >&2; sleep "$poll_seconds" ;;
    esac
  done
  echo "seedjax: preempted (worker codes: ${codes:-none}); resuming, restart $attempt of $max_restarts" >&2
done
