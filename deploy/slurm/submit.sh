#!/bin/bash
# Submits a batchwright run to Slurm: an array of NUM_SHARDS shard tasks (shard.sbatch), then the
# merge (merge.sbatch) once all of them succeeded. Prints the two job ids.
#   MODEL=baidu/ERNIE-4.5-0.3B-PT INPUT=/shared/in.jsonl OUT_DIR=/shared/run1 NUM_SHARDS=8 \
#     deploy/slurm/submit.sh [extra sbatch flags, e.g. --partition=gpu]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${MODEL:?set MODEL}" "${INPUT:?set INPUT}" "${OUT_DIR:?set OUT_DIR}" "${NUM_SHARDS:?set NUM_SHARDS}"
export MODEL INPUT OUT_DIR NUM_SHARDS
array=$(sbatch --parsable --export=ALL --array="0-$((NUM_SHARDS - 1))" "$@" "$here/shard.sbatch")
array=${array%%;*} # --parsable prints "id" or "id;cluster"
merge=$(sbatch --parsable --export=ALL --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  "$@" "$here/merge.sbatch")
echo "shards: job $array (array 0-$((NUM_SHARDS - 1))), merge: job ${merge%%;*}"
