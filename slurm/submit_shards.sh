#!/bin/bash
# Build one corpus's shards as a SLURM job array of PARTS tasks, then merge them in a dependent job.
#
#   slurm/submit_shards.sh PARTS NAME OUT [data_recipes build options ...]
#   e.g. slurm/submit_shards.sh 8 clotho data/shards --src /data/clotho --sample-rate 44100
#
# Extra sbatch options for both jobs go in SBATCH_ARGS, e.g. SBATCH_ARGS="--partition=cpu --account=x".
# Prints "<array job id> <merge job id>". The merge runs only if every task succeeds (afterok).

set -euo pipefail

usage="usage: slurm/submit_shards.sh PARTS NAME OUT [build options ...]"
PARTS=${1:?$usage}
NAME=${2:?$usage}
OUT=${3:?$usage}
shift 3
if ! [[ "$PARTS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: PARTS must be a positive integer, got '$PARTS'" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
array_job=$(sbatch --parsable ${SBATCH_ARGS:-} --array="0-$(( PARTS - 1 ))" --export="ALL,PARTS=${PARTS}" \
    "$HERE/build_shards.sbatch" "$NAME" "$OUT" "$@")
array_job=${array_job%%;*}  # --parsable prints "id;cluster" on multi-cluster setups
# shellcheck disable=SC2086
merge_job=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterok:${array_job}" --kill-on-invalid-dep=yes \
    "$HERE/merge_shards.sbatch" "$NAME" "$OUT")
echo "${array_job} ${merge_job%%;*}"
