#!/usr/bin/env bash
# The target-LM ladder benchmark (issue 8), end to end: lds labels on every rung, every method on every
# rung (gradient methods at each projection size), the featurization-cost curve, and the ladder report.
# Every step resumes in its output folder, so a rerun after an interruption redoes nothing that finished;
# a saved cost curve over the same rungs is reused (REDO_COST=1 measures it again).
#
#   make demo && bash benchmarks/run_ladder.sh          # demo preset, rungs x1 and x10
#   FACTORS="1 10 100" bash benchmarks/run_ladder.sh     # add the 100x rung (hours on 2 CPU cores)
#
# Environment:
#   PRESET   label/eval preset (default demo)
#   OUT      folder of the corpus, labels and the trained AirRep (default out/$PRESET)
#   MODEL    the AirRep checkpoint applied unchanged to every rung (default $OUT/model, what `make demo` trains)
#   FACTORS  ladder rungs (default "1 10")
#   DIMS     gradient projection sizes (default "384 4096 18432"); every gradient method runs at each
#   COST_RUNGS  rungs of the cost curve (default: FACTORS, x1, x10, x100 and qwen2.5-0.5b)
#   COST_ARGS   flags for bench_featurization_cost.py (default "--skip_grad_dot": its own 256 examples and
#               medians of 3 rounds, LoGra alone on the rungs, as the Cost table of benchmarks/README.md)
#   REDO_COST   set to 1 to measure the cost curve again even when one over the same rungs is saved
#   PYTHON   interpreter (default .venv/bin/python)
set -euo pipefail

PRESET=${PRESET:-demo}
OUT=${OUT:-out/$PRESET}
MODEL=${MODEL:-$OUT/model}
FACTORS=${FACTORS:-"1 10"}
DIMS=${DIMS:-"384 4096 18432"}
PYTHON=${PYTHON:-.venv/bin/python}
LADDER=$OUT/ladder

read -r -a dims <<<"$DIMS"

rung_args=()
for f in $FACTORS; do
  if [[ $f == 1 ]]; then
    labels=$OUT/labels-lds
    batch=()
  else
    labels=$OUT/labels-lds-x$f
    batch=(--models_per_batch 1)  # stacking subset models with vmap pays off only on the tiny rung
  fi
  "$PYTHON" generate_labels.py --preset "$PRESET" --mode lds --target_lm_scale "$f" "${batch[@]}" \
    --output_dir "$labels"
  # One run per rung: each gradient is computed once and projected to every size in DIMS.
  "$PYTHON" eval_lds.py --preset "$PRESET" --labels "$labels" --output_dir "$LADDER/x$f/report" \
    --methods airrep base-encoder bm25 tfidf grad-dot grad-cos tracin logra --model "$MODEL" \
    --projection_dim "${dims[@]}"
  rung_args+=("x$f=$LADDER/x$f/report")
done

# By default the cost curve reaches x100 and the Qwen2.5-0.5B architecture: cost needs no labels.
if [[ -z ${COST_RUNGS:-} ]]; then
  COST_RUNGS="$(for f in $FACTORS 1 10 100; do echo "x$f"; done | sort -t x -k 2 -nu | tr '\n' ' ')qwen2.5-0.5b"
fi
read -r -a cost_rungs <<<"$COST_RUNGS"
# The curve is measured as the Cost table's ratio is, by the bench's own defaults (256 examples, medians
# of 3 rounds), without grad-dot: at the 0.5B rung alone that would be over an hour (about 6.6 s an
# example, 768 times). LoGra's rounds over these rungs come to about 20 minutes by the Cost table's rates.
read -r -a cost_args <<<"${COST_ARGS:---skip_grad_dot}"
cost_json=$LADDER/cost_curve.json
# The curve's figures are only comparable within one run, so it is reused whole or measured whole.
if [[ -f $cost_json && ${REDO_COST:-0} != 1 ]] && "$PYTHON" - "$cost_json" "${cost_rungs[@]}" <<'EOF'
import json
import sys

saved = [rung["rung"] for rung in json.load(open(sys.argv[1]))["rungs"]]
sys.exit(0 if saved == sys.argv[2:] else 1)
EOF
then
  echo "reusing the cost curve in $cost_json (same rungs; REDO_COST=1 measures it again)"
else
  PYTHONPATH=. "$PYTHON" benchmarks/bench_featurization_cost.py --preset "$PRESET" --rungs "${cost_rungs[@]}" \
    --output "$cost_json" --plot "$LADDER/cost_curve.png" "${cost_args[@]}"
fi
"$PYTHON" ladder_report.py --output_dir "$LADDER/report" --rung "${rung_args[@]}" \
  --cost_curve "$cost_json"
echo "ladder report: $LADDER/report/ladder.md"
