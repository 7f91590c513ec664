#!/usr/bin/env bash
# One-shot GPU check: the CUDA-specific tests, then the training-step benchmark at paper size
# (albef_pretrain, batch 64, 256 px, 30 tokens, queue 65,536; fused AdamW, as the trainer uses on
# CUDA) in fp32, bf16 and bf16 with
# torch.compile, and batch 256 in bf16 with gradient checkpointing; one table at the end.
# Sized to finish within 10 minutes on one H200 (each stage has its own time limit).
#
#   bash tools/gpu_check.sh                  # from the repository root
#   WHEELS=gpu_wheels bash tools/gpu_check.sh  # install missing pure-Python dependencies first
#
# The GPU machine may have another torch (2.11 was tested for) and lack omegaconf, fvcore and
# submitit. Make a wheel folder on a machine with network access and carry it along:
#   pip download --only-binary=:all: -d gpu_wheels omegaconf==2.3.0 fvcore==0.1.5.post20221221 \
#       submitit==1.5.2 antlr4-python3-runtime==4.9.3 iopath portalocker yacs tabulate termcolor
# (fvcore publishes only an sdist: build it once with `pip wheel --no-deps fvcore -w gpu_wheels`.)
# Results land in $OUT (default /tmp/gpu_check): one JSON line per benchmark, pytest's log, the
# table (table.md).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! $PY -c "import omegaconf, fvcore" 2>/dev/null; then
  if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
    $PY -m pip install -q --no-index --find-links "$WHEELS" omegaconf fvcore submitit \
      || { echo "error: installing from WHEELS=$WHEELS failed" >&2; exit 2; }
  else
    echo "error: omegaconf/fvcore are not importable; set WHEELS=<folder of wheels> (see the" \
         "header of tools/gpu_check.sh)" >&2
    exit 2
  fi
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, '|', torch.cuda.get_device_name(0))" | tee "$OUT/device.txt" \
  || { echo "error: this machine has no usable CUDA device" >&2; exit 2; }

# 1. CUDA-specific tests (sync-free step under set_sync_debug_mode, compile parity, precision).
timeout 240 $PY -m pytest -q -rs -p no:cacheprovider tests/speed/test_compile_and_sync.py \
  tests/trainers/test_precision.py > "$OUT/pytest.txt" 2>&1
echo "pytest exit $? (log: $OUT/pytest.txt)"; tail -n 3 "$OUT/pytest.txt"

# 2. Benchmarks: label | time limit (s) | arguments of tools/benchmark.py
run() {
  local label=$1 limit=$2; shift 2
  echo "== $label"
  timeout "$limit" $PY tools/benchmark.py --device cuda --fused-adamw --json "$@" > "$OUT/$label.txt" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || echo "   failed (exit $rc), see $OUT/$label.txt"
  grep '^{' "$OUT/$label.txt" | tail -n 1 | sed "s/^{/{\"label\": \"$label\", /" >> "$OUT/results.jsonl"
}
: > "$OUT/results.jsonl"
run fp32-b64            90  --precision fp32 --steps 20 --warmup 5
run bf16-b64            90  --precision bf16 --steps 20 --warmup 5
run bf16-b64-compile    240 --precision bf16 --steps 20 --warmup 8 --compile
run bf16-b256-gradckpt  120 --precision bf16 --batch-size 256 --steps 5 --warmup 2 \
                            --model-overrides gradient_checkpointing=true

$PY - "$OUT" <<'PYEOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1] + "/results.jsonl") if line.strip()]
print("| case | batch | img/s | step ms | TFLOP/s | peak GiB | official img/s |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    ref = r.get("reference_img_per_s")
    print(f"| {r['label']} | {r['batch_size']} | {r['img_per_s']:.0f} | "
          f"{r['step_time_s_median'] * 1e3:.0f} | {r['tflop_per_s']:.0f} | "
          f"{r['peak_memory_gib']:.1f} | {ref if ref else 'n/a'} |")
print(f"\ntargets: >= 1000 img/s at batch 64 bf16 with peak <= 21 GiB; batch 256 within 40 GiB")
PYEOF
