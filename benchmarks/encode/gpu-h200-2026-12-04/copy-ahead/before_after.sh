#!/usr/bin/env bash
# encode on the GPU before (7a24fcf: each batch copied to the GPU with a plain .to(), which waits for the
# GPU's queue, and autocast entered once a batch) and after (pinned, non-blocking copies; one autocast
# context a call), twice each, interleaved, over 8,192 texts in one window. Then, on the new code,
# tokenizing ahead on and off over 4 windows of 2,048, twice each. First, the new CUDA path's
# embeddings against the CPU's. Results accumulate in $OUT/all.log and $OUT/results.tgz, so a run cut
# short still returns what it finished.
set -uo pipefail
carry=$PWD/.device-carry
args=(--device cuda --n 8192 --batch_sizes 128 --precisions fp32 bf16 --repeats 3 --peak_tokens 4096
      --encoder "$carry/minilm" --records "$carry/records.jsonl.gz")
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p /tmp/results
bench() {  # name, folder, extra arguments...
  local name=$1 dir=$2; shift 2
  (cd "$dir" && PYTHONPATH=.:${PYTHONPATH:-} python3 benchmarks/bench_encode_roofline.py "${args[@]}" "$@" \
     --output "/tmp/results/$name.json" 2>&1 | grep -v "^Loading" | tail -4 | sed "s/^/$name: /" | tee -a "$OUT/all.log")
  tar czf "$OUT/results.tgz" -C /tmp/results .
}
PYTHONPATH=.:${PYTHONPATH:-} python3 - "$carry" 2>&1 <<'PY' | grep -v "^Loading" | tee -a "$OUT/all.log"
import gzip, json, sys
import numpy as np
import modeling_airrep
from modeling_airrep import AirRepModel
carry = sys.argv[1]
with gzip.open(f"{carry}/records.jsonl.gz", "rt") as handle:
    records = [json.loads(line) for line, _ in zip(handle, range(2048))]
model = AirRepModel.from_encoder(f"{carry}/minilm")
cpu = model.encode(records, batch_size=128)
model.to("cuda")
one_window = model.encode(records, batch_size=128)
modeling_airrep.ENCODE_WINDOW = 512  # four windows: tokenized ahead, pinned copies across windows
four_windows = model.encode(records, batch_size=128)
bf16 = model.encode(records, batch_size=128, precision="bf16")
unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
print(f"check: cuda fp32 vs cpu max |diff| {np.abs(one_window - cpu).max():.2e}; four windows vs one "
      f"{np.abs(four_windows - one_window).max():.2e}; bf16 min cosine vs cpu {(unit(bf16) * unit(cpu)).sum(1).min():.6f}")
PY
for round in 1 2; do
  bench "before-$round" "$carry/before"
  bench "after-$round" .
done
for round in 1 2; do
  for prefetch in on off; do
    bench "window2048-prefetch-$prefetch-$round" . --window 2048 --prefetch $prefetch
  done
done
