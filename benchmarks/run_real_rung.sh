#!/usr/bin/env bash
# The real rung (issue 24): SmolLM2-135M-Instruct, LoRA-tuned on the real-text corpus, as the target LM.
# Every step resumes in its output folder, so a rerun after an interruption (or in a later session)
# redoes nothing that finished. The steps, each a few hours at most on 2 CPU cores:
#
#   labels   the lds labels (--preset smollm2): random subsets, their LoRA models' losses on held-out
#            test queries, and twins for the noise ceiling
#   recipe   AirRep's third recipe: SmolLM2's own train labels (cross-validation splits of the pool, the
#            layers below the adapters computed once: --cache_frozen_layers) and a checkpoint trained on
#            them, $OUT/model-smollm2
#   validate the AirRep checkpoints in MODELS and the untrained encoder on the validation splits of those
#            train labels ($OUT/validation.json): choose BEST there, never on the lds test queries
#   eval     every method on those labels: the lexical ones, the untrained encoder, the gradient methods
#            (every weight, and the LoRA adapters only) at each projection size, EK-FAC, and every
#            AirRep checkpoint in MODELS
#   report   paired differences against the best AirRep (BEST), the label structure, the frontier plot
#            and the cost ratio of AirRep against LoGra and EK-FAC at this size
#
#   bash benchmarks/run_real_rung.sh labels
#       (the finished labels are committed in benchmarks/real/labels-lds: `mkdir -p out/real && cp -r
#       benchmarks/real/labels-lds out/real/` first, and this step only rebuilds the corpus and SmolLM2's
#       folder, which the labels name relative to themselves, and finds the labels complete)
#   bash benchmarks/run_real_rung.sh recipe
#   MODELS="out/demo/model out/realtext/model-s120 out/real/model-smollm2" bash benchmarks/run_real_rung.sh validate
#   MODELS="out/demo/model out/realtext/model-s120 out/real/model-smollm2" bash benchmarks/run_real_rung.sh eval
#   BEST=<the checkpoint validation chose> bash benchmarks/run_real_rung.sh report
#
# Environment:
#   OUT      folder of the corpus, the converted SmolLM2, labels and reports (default out/real)
#   MODELS   AirRep checkpoints to score (default: none), each into its own report folder,
#            $OUT/report-airrep-NAME, NAME being the checkpoint folder's name; so a checkpoint trained
#            later is scored by another `eval` with MODELS naming it alone (the other steps resume)
#   BEST     NAME of the AirRep checkpoint chosen on validation splits (for `report`)
#   BEST_POOLING   its pooling, also chosen on validation splits (default attention, AirRep's own)
#   DIMS     gradient projection sizes (default "384 4096 18432")
#   PYTHON   interpreter (default .venv/bin/python)
# and, to run the same steps at another size (the test runs them at smoke size):
#   PRESET, LABEL_ARGS   label preset (default smollm2) and more generate_labels.py flags (default none)
#   TRAIN_LABEL_ARGS     generate_labels.py flags for the train labels only (default --cache_frozen_layers)
#   TRAIN_PRESET, TRAIN_ARGS   train_airrep.py preset (default demo) and more flags (default none)
#   RECIPE_NAME          the checkpoint's folder in $OUT (default model-smollm2): another name trains another
#                        candidate on the same train labels, e.g. with the authors' options in TRAIN_ARGS
#   EVAL_PRESET          eval_lds.py preset (default demo)
#   EKFAC_MEMORY_GIB     memory for EK-FAC's query gradients (default 12)
#   COLUMNS              metadata columns for the label structure (default "task source category targets")
#   RUNG, COST_ARGS      the rung's name in the ladder report (default smollm2-135m) and the flags of
#                        bench_featurization_cost.py (default "--rungs smollm2-135m --ekfac --skip_grad_dot":
#                        the ratios asked for are against LoGra and EK-FAC, and per-example gradients at
#                        this size take about as long as both together; the eval step's report times them); a
#                        saved cost JSON is reused unless REDO_COST=1
set -euo pipefail

OUT=${OUT:-out/real}
DIMS=${DIMS:-"384 4096 18432"}
PYTHON=${PYTHON:-.venv/bin/python}
PRESET=${PRESET:-smollm2}
EVAL_PRESET=${EVAL_PRESET:-demo}
RUNG=${RUNG:-smollm2-135m}
read -r -a dims <<<"$DIMS"
read -r -a models <<<"${MODELS:-}"
read -r -a label_args <<<"${LABEL_ARGS:-}"
read -r -a train_label_args <<<"${TRAIN_LABEL_ARGS---cache_frozen_layers}"
read -r -a train_args <<<"${TRAIN_ARGS:-}"
read -r -a cost_args <<<"${COST_ARGS:---rungs smollm2-135m --ekfac --skip_grad_dot}"
read -r -a columns <<<"${COLUMNS:-task source category targets}"
labels=$OUT/labels-lds

case ${1:-} in
  labels)
    "$PYTHON" generate_labels.py --preset "$PRESET" --mode lds --output_dir "$labels" "${label_args[@]}"
    ;;
  recipe)
    "$PYTHON" generate_labels.py --preset "$PRESET" --mode train --output_dir "$OUT/labels-train" \
      "${label_args[@]}" "${train_label_args[@]}"
    checkpoint=$OUT/${RECIPE_NAME:-model-smollm2}
    if [[ -f $checkpoint/airrep_training.json ]]; then
      echo "$checkpoint is trained; remove it to train again"
    else
      "$PYTHON" train_airrep.py --preset "${TRAIN_PRESET:-demo}" --labels "$OUT/labels-train" \
        --output_dir "$checkpoint" "${train_args[@]}"
    fi
    ;;
  validate)
    : "${MODELS:?name the AirRep checkpoints to compare on the validation splits}"
    "$PYTHON" -m airrep.evaluation.compare_validation --labels "$OUT/labels-train" --models "${models[@]}" untrained \
      --output "$OUT/validation.json"
    ;;
  eval)
    # Checked before any work: each checkpoint's report is named after its folder.
    declare -A seen=()
    for model in "${models[@]}"; do
      name=$(basename "$model")
      if [[ -n ${seen[$name]:-} ]]; then
        echo "MODELS: $model and ${seen[$name]} share the folder name '$name', which names their reports" >&2
        exit 2
      fi
      seen[$name]=$model
    done
    # One run for the methods of the target LM: the whole-pool fine-tune and each gradient are computed
    # once and projected to every size in DIMS.
    "$PYTHON" eval_lds.py --preset "$EVAL_PRESET" --labels "$labels" --output_dir "$OUT/report" \
      --methods base-encoder bm25 tfidf grad-dot grad-cos tracin logra grad-dot-lora grad-cos-lora tracin-lora \
      --projection_dim "${dims[@]}"
    # EK-FAC passes over the pool once per batch of queries, as many as their full gradients (two copies of
    # 425 MB each at this size) fit in --gradient_memory_gib: 12 GiB makes 14 passes over the 200 queries
    # rather than 29 at the default 6. Training gradients then come 4 at a time (425 MB each per example),
    # so that all fits in 24 GiB; apart from the other methods, whose budgets differ. About 4.5 hours on
    # 2 cores (a 45-minute fit, then about 16 minutes per pass); a rerun resumes after the last finished
    # stage or pass (the report's work/ekfac).
    "$PYTHON" eval_lds.py --preset "$EVAL_PRESET" --labels "$labels" --output_dir "$OUT/report-ekfac" \
      --methods ekfac --gradient_memory_gib "${EKFAC_MEMORY_GIB:-12}" --gradient_batch_size 4
    for model in "${models[@]}"; do
      "$PYTHON" eval_lds.py --preset "$EVAL_PRESET" --labels "$labels" --methods airrep --model "$model" \
        --output_dir "$OUT/report-airrep-$(basename "$model")"
    done
    ;;
  report)
    : "${BEST:?name the AirRep checkpoint chosen on validation, by its folder name}"
    best=$OUT/report-airrep-$BEST
    if [[ ! -f $best/results.json ]]; then
      echo "BEST=$BEST: no report $best/results.json; score the checkpoint with the eval step first" >&2
      exit 2
    fi
    # AirRep at the pooling validation chose, not the better of the two on these test queries.
    methods=("$best:airrep.${BEST_POOLING:-attention}")
    for report in "$OUT/report" "$OUT/report-ekfac"; do
      for name in $("$PYTHON" -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["methods"]))' \
        "$report/results.json"); do
        methods+=("$report:$name")
      done
    done
    "$PYTHON" -m airrep.evaluation.compare_reports --labels "$labels" --methods "${methods[@]}" \
      --output "$OUT/paired.json"
    "$PYTHON" -m airrep.evaluation.label_structure --labels "$labels" --columns "${columns[@]}" \
      --report "$OUT/report" --by task --output "$OUT/label-structure.json"
    if [[ ! -f $OUT/cost.json || ${REDO_COST:-0} == 1 ]]; then
      PYTHONPATH=. "$PYTHON" benchmarks/bench_featurization_cost.py "${cost_args[@]}" --output "$OUT/cost.json"
    fi
    "$PYTHON" ladder_report.py --output_dir "$OUT/ladder" \
      --rung "$RUNG=$OUT/report,$OUT/report-ekfac,$best" --cost_curve "$OUT/cost.json"
    echo "real rung: $OUT/ladder/ladder.md"
    ;;
  *)
    echo "usage: bash benchmarks/run_real_rung.sh labels|recipe|validate|eval|report (see the top of the script)" >&2
    exit 2
    ;;
esac
