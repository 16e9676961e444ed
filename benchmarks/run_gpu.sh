#!/usr/bin/env bash
# AirRep's encoder and the gradient methods on one GPU (issue 27, item 4), in one short run:
#
#   1. bench_encode_roofline.py on the GPU: encode's texts per second over real-text records at batch
#      128 and 512, fp32 and bf16, against the GPU's matrix-multiply rate at the encoder's shapes, with
#      the time spent tokenizing on the CPU and each precision's smallest cosine to fp32.
#   1b. the same, tokenizing each window of texts ahead in a thread against tokenizing in line (encode()'s
#      default on a GPU against its CPU path), over 4 windows of 1,024 texts, alternated twice.
#   2. bench_featurization_cost.py on the GPU: LoGra and one EK-FAC job at SmolLM2-135M's and
#      Qwen2.5-0.5B's architectures against AirRep's encode of the same examples, medians of 3 rounds.
#
#   bash benchmarks/run_gpu.sh
#
# Environment:
#   OUT       where the logs and JSON go (default out/gpu)
#   PYTHON    interpreter (default python3)
#   ENCODER   MiniLM's folder, for a machine without the bundled package (default: the package)
#   RECORDS   JSON-lines records (.gz allowed) to encode, for a machine without Debian's text
#             packages (default: drawn from the real-text corpus)
#   STEPS     which steps to run, of 1 1b 2 (default: all three); a lease has minutes, not hours
#   ROUNDS    how many times step 1b alternates its two settings (default 2)
# Each step runs even if the one before it failed; the exit status says whether all of them passed.
set -uo pipefail

OUT=${OUT:-out/gpu}
PYTHON=${PYTHON:-python3}
STEPS=" ${STEPS:-1 1b 2} "
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
encoder=() records=()
[[ -n ${ENCODER:-} ]] && encoder=(--encoder "$ENCODER")
[[ -n ${RECORDS:-} ]] && records=(--records "$RECORDS")
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
  | tee -a "$OUT/gpu.txt"

[[ $STEPS == *" 1 "* ]] && { "$PYTHON" benchmarks/bench_encode_roofline.py --device cuda --n 4096 --batch_sizes 128 512 --precisions fp32 bf16 \
  --repeats 5 --peak_tokens 65536 "${encoder[@]}" "${records[@]}" --output "$OUT/roofline-gpu.json" 2>&1 \
  | grep -v "^Loading weights" | tee "$OUT/roofline-gpu.log" || status=1; }

[[ $STEPS == *" 1b "* ]] && for round in $(seq "$ROUNDS"); do
  for prefetch in on off; do
    "$PYTHON" benchmarks/bench_encode_roofline.py --device cuda --n 4096 --window 1024 --prefetch $prefetch \
      --batch_sizes 128 --precisions fp32 bf16 --repeats 3 --peak_tokens 4096 "${encoder[@]}" "${records[@]}" \
      --output "$OUT/prefetch-$prefetch-$round.json" 2>&1 | grep -v "^Loading weights" \
      | tee "$OUT/prefetch-$prefetch-$round.log" || status=1
  done
done

# The GPU holds every query's gradient at once (40 GiB), so EK-FAC makes one pass over its training set;
# batches of 16 suit the GPU better than the CPU's 4.
[[ $STEPS == *" 2 "* ]] && { "$PYTHON" benchmarks/bench_featurization_cost.py --device cuda --rungs smollm2-135m qwen2.5-0.5b --n 256 \
  --rounds 3 --skip_grad_dot --ekfac --gradient_batch_size 16 --gradient_memory_gib 40 --encode_batch_size 128 \
  "${encoder[@]}" --output "$OUT/cost-gpu.json" 2>&1 | grep -v "^Loading weights" | tee "$OUT/cost-gpu.log" || status=1; }
exit $status
