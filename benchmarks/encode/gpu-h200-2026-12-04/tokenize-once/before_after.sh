#!/usr/bin/env bash
# encode on the GPU before (2e9eefb: each text tokenized twice) and after (once), twice each, interleaved.
set -uo pipefail
args=(--device cuda --n 4096 --batch_sizes 128 512 --precisions fp32 bf16 --repeats 3 --peak_tokens 65536
      --encoder "$PWD/.device-carry/minilm-fp16" --records "$PWD/.device-carry/records.jsonl.gz")
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
for round in 1 2; do
  (cd .device-carry/before && PYTHONPATH=.:$PYTHONPATH python3 benchmarks/bench_encode_roofline.py "${args[@]}" \
     --output "$OUT/before-$round.json" 2>&1 | grep -v "^Loading" | tail -5 | tee "$OUT/before-$round.log")
  PYTHONPATH=.:$PYTHONPATH python3 benchmarks/bench_encode_roofline.py "${args[@]}" --output "$OUT/after-$round.json" \
     2>&1 | grep -v "^Loading" | tail -5 | tee "$OUT/after-$round.log"
done
