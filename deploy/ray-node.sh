#!/bin/sh
# Entrypoint of the Trainer on a Ray cluster (docker-compose, Kubernetes): a Ray driver must run
# on a node of the cluster, so when RAY_HEAD_ADDRESS (host:port of the head's GCS) is set this
# container first joins the cluster as a node that offers no CPUs or GPUs (training never lands
# on it), then runs the command with BOOTHSTUDIO_RAY_ADDRESS=auto. Without it, the command runs
# as it is (jobs in local worker processes).
set -eu
if [ -n "${RAY_HEAD_ADDRESS:-}" ]; then
  ray start --address="$RAY_HEAD_ADDRESS" --num-cpus=0 --num-gpus=0 --disable-usage-stats
  export BOOTHSTUDIO_RAY_ADDRESS=auto
fi
exec "$@"
