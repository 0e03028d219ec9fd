#!/bin/bash
# A/B of `retain_freed_memory` on the training step: config (a) and config q, fp32 and bf16, without (0) and with (1)
# it alternating, two rounds, each case in its own process (ours_train.py; results/ours_train_*_ab<0|1>_r<round>.json).
# usage: SANE_CHECKOUT=<sane_hf checkout> [PY=<python>] [BENCH_THREADS=2] bash ab_retain.sh
cd "$(dirname "$0")"; mkdir -p results
PY=${PY:-$SANE_CHECKOUT/.venv/bin/python}; T=${BENCH_THREADS:-2}
export OMP_NUM_THREADS=$T BENCH_THREADS=$T PYTHONWARNINGS=ignore PYTHONPATH=$SANE_CHECKOUT SANE_CHECKOUT
for round in 1 2; do
  for case in "a 2 4" "q 3 20"; do
    set -- $case
    for p in fp32 bf16; do
      for retain in 0 1; do
        BENCH_TAG=_ab${retain}_r$round BENCH_RETAIN_FREED_MEMORY=$retain $PY ours_train.py $p $2 $3 $1 ours > /dev/null 2>&1
        echo "$(date +%T) round $round config $1 $p retain_freed_memory=$retain rc=$?"
      done
    done
  done
done
