#!/bin/bash
# Every row of BENCHMARKS.md's issue-18 table, the original beside sane_hf, alternating, each case in its own process.
# usage: SANE_CHECKOUT=<sane_hf checkout> [SANE_BASE=<sane_hf checkout before the change>] [PY=<python with sane_hf's
#        deps>] [BENCH_THREADS=2] bash issue18.sh [--quick]
# --quick: one order, fewer runs (a dry run that checks every case works). Then: python issue18_table.py
cd "$(dirname "$0")"; mkdir -p results
PY=${PY:-$SANE_CHECKOUT/.venv/bin/python}; OFF=venv-off/bin/python; T=${BENCH_THREADS:-2}
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T OPENBLAS_NUM_THREADS=$T BENCH_THREADS=$T PYTHONWARNINGS=ignore
if [ "$1" = --quick ]; then ORDERS="ours_first"; TW=1; TR=2; EW=0; ER=2; QR=5; SR=1; OR=1; else ORDERS="ours_first off_first"; TW=2; TR=5; EW=1; ER=4; QR=20; SR=3; OR=2; fi
run() { local name=$1; shift; echo "=== $(date +%T) $name"; "$@" > results/log_${name}${BENCH_TAG}.txt 2>&1; echo "rc=$? $(date +%T)"; }
ours() { PYTHONPATH=$SANE_CHECKOUT SANE_CHECKOUT=$SANE_CHECKOUT $PY "$@"; }
base() { PYTHONPATH=$SANE_BASE SANE_CHECKOUT=$SANE_BASE $PY "$@"; }
pair() { if [ "$ORDER" = off_first ]; then run "$3" $OFF $4; run "$1" ours $2; else run "$1" ours $2; run "$3" $OFF $4; fi; }
[ -f resnet18_sd0.pt ] || PYTHONPATH=$SANE_CHECKOUT $PY make_sd.py
[ -f official_tok_cache.done ] || { $OFF off_tok.py > results/log_off_tok_once.txt 2>&1; touch official_tok_cache.done; }
i=0
for ORDER in $ORDERS; do
  i=$((i+1)); export BENCH_TAG="_r$i"
  run bounds ours bounds.py r$i
  pair ours_tok "ours_tok.py" off_tok "off_tok.py"
  run ours_tok_retained ours ours_tok.py retained
  for p in fp32 bf16; do
    pair ours_train_$p "ours_train.py $p $TW $TR" off_train_$p "off_train.py $p $TW $TR"
    pair ours_embed_$p "ours_embed.py $p $EW $ER" off_embed_$p "off_embed.py $p $EW $ER"
    # the quickstart-size SANE (config q): this checkout against the one before the change ("today")
    run ours_train_${p}_q ours ours_train.py $p 3 $QR q ours
    [ -n "$SANE_BASE" ] && run base_train_${p}_q base ours_train.py $p 3 $QR q base
    # sample one ResNet-18 (KDE + haloed decode + detokenize); the original's per-token KDE is slow (BENCHMARKS.md), so it
    # runs no warm-up beyond its first call and $OR timed runs
    pair ours_sample_$p "ours_sample.py $p $EW $ER" off_sample_$p "off_sample.py $p 0 $OR"
    # sane_hf's sampling step by step (KDE, decode, detokenize, building the model), for the breakdown
    run ours_sample_steps_$p ours $SANE_CHECKOUT/benchmarks/bench_scale.py --one sample --repeats $SR --threads $T --precision $p
  done
done
echo "=== done $(date +%T)"
