#!/usr/bin/env bash
# One unattended GPU check of issue 21 ("Scale"), start to end, < 8 minutes on one GPU, offline:
#   (a) throughput: ltreg vs a plain PyTorch loop, bf16 + channels_last, ResNet-50 at 224 px on
#       synthetic data made in-process (goal >= 0.95, enforced), then ltreg's data pipeline alone on
#       the same data (default workers vs num_workers=0) to show whether the data keeps up;
#   (b) every registered method (ltreg.list_methods(), plugins included) for a few steps with bf16,
#       then again with compile=True;
#   (c) a one-process FSDP smoke run: accelerate launch --use_fsdp --num_processes 1 -m ltreg train ...
#   (d) a ViT with tuners (issue 26): peak memory and step time of lora / adaptformer / linear against full
#       on ViT-B/16 at 224 px, bf16, and ltreg + lora against a plain peft + timm loop (goal >= 0.95, enforced)
# Every figure is printed; any failure (a run, a missed goal, a broken plugin) stops it with a
# non-zero exit status and says where.
#
#   bash benchmarks/gpu_check.sh               # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps on CPU with tiny models (CI): no bf16,
#                                              # no compile, no FSDP (accelerate uses FSDP only on GPUs)
# PYTHON=/path/to/python overrides the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SMOKE=0
case "${1:-}" in
  --cpu-smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
OUT=$(mktemp -d -t ltreg-gpu-check-XXXXXX)
trap 'rc=$?; echo; echo "gpu_check: FAILED (exit $rc) at line $LINENO: $BASH_COMMAND  [${SECONDS}s; run folders in $OUT]" >&2; exit $rc' ERR
step() { echo; echo "=== $* [$(date +%H:%M:%S), ${SECONDS}s elapsed]"; }

step "environment"
echo "mode: $([ $SMOKE = 1 ] && echo 'cpu smoke' || echo gpu)   python: $PY   scratch: $OUT"
if [ $SMOKE = 0 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" - "$SMOKE" <<'EOF'
import os, sys
import accelerate, timm, torch
import ltreg
smoke = sys.argv[1] == "1"
print(f"ltreg {ltreg.__version__}  torch {torch.__version__}  timm {timm.__version__}  accelerate {accelerate.__version__}"
      f"  CPUs {os.cpu_count()}  load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
if not smoke:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch: run on a GPU machine or pass --cpu-smoke")
    print(f"GPU {torch.cuda.get_device_name(0)}  bf16 supported: {torch.cuda.is_bf16_supported()}")
    if not torch.cuda.is_bf16_supported():
        sys.exit("this GPU has no bf16 support")
EOF

step "(a) throughput: ltreg vs plain PyTorch loop"
if [ $SMOKE = 0 ]; then
  timeout 300 "$PY" benchmarks/throughput.py --mode cuda --rounds 3 --epochs 3 --steps 15 --strict --timeout 150 \
    --json "$OUT/throughput_cuda.json"
  timeout 120 "$PY" benchmarks/throughput.py --mode data --dataset synthetic --device cuda --batch-size 256 \
    --rounds 1 --epochs 2 --steps 6 --timeout 100 --json "$OUT/throughput_data.json"
else
  # The cuda-mode code path (channels_last, synthetic RGB data) on CPU with a tiny model, one round.
  timeout 240 "$PY" benchmarks/throughput.py --mode cuda --device cpu --precision no --backbone resnet8 \
    --image-size 32 --batch-size 32 --num-workers 0 --rounds 1 --epochs 2 --steps 3 --timeout 120
  timeout 240 "$PY" benchmarks/throughput.py --mode data --dataset digits-lt --batch-size 32 \
    --rounds 1 --epochs 2 --steps 3 --timeout 120
fi

# every_method.py <label> <extra ltreg.train keyword arguments as JSON> <scratch folder> <smoke 0|1>
cat > "$OUT/every_method.py" <<'EOF'
import json, math, sys, time, traceback
import ltreg

label, extra, out, smoke = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
rows = ltreg.list_methods()
broken = [r for r in rows if r["error"]]
names = sorted(r["name"] for r in rows if not r["error"])
print(f"{len(names)} methods: {', '.join(names)}" + (f"; {len(broken)} failed to load" if broken else ""))
failures = [f"{r['name']} ({r.get('dist')}): does not load: {r['error']}" for r in broken]
for name in names:
    start = time.time()
    try:
        res = ltreg.train(name, dataset="digits-lt", backbone="resnet8", epochs=2, max_steps_per_epoch=3,
                          batch_size=16, stage2_epochs=1, eval_batch_size=512, num_workers=0, cpu=smoke,
                          output_dir=f"{out}/{label}/{name}", overwrite=True, log_every=1, **extra)
        losses = [r["loss"] for r in res.history if "loss" in r]
        if not losses or not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"losses not finite: {losses}")
        print(f"  ok    {name:<22} {time.time() - start:6.1f} s  loss {losses[0]:.4f} -> {losses[-1]:.4f}  "
              f"top1 {res.metrics.get('top1', float('nan')):.1f}", flush=True)
    except Exception as exc:  # keep going: report every method that fails
        traceback.print_exc()
        failures.append(f"{name}: {type(exc).__name__}: {exc}")
        print(f"  FAIL  {name:<22} {time.time() - start:6.1f} s  {type(exc).__name__}: {exc}", flush=True)
if failures:
    sys.exit(f"{label}: {len(failures)} method(s) failed:\n  " + "\n  ".join(failures))
print(f"{label}: all {len(names)} methods ran")
EOF

if [ $SMOKE = 0 ]; then
  step "(b1) every method, bf16"
  timeout 150 "$PY" "$OUT/every_method.py" bf16 '{"mixed_precision": "bf16"}' "$OUT" 0
  step "(b2) every method, bf16 + compile"
  timeout 240 "$PY" "$OUT/every_method.py" bf16-compile '{"mixed_precision": "bf16", "compile": true}' "$OUT" 0
else
  step "(b) every method, fp32 on CPU (no bf16, no compile in the smoke)"
  timeout 240 "$PY" "$OUT/every_method.py" fp32 '{}' "$OUT" 1
fi

if [ $SMOKE = 0 ]; then
  step "(c) FSDP, one process: the CLI under accelerate launch --use_fsdp"
  FSDP_FLAGS=(--use_fsdp --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no
              --fsdp_version 1 --fsdp_sharding_strategy FULL_SHARD --fsdp_auto_wrap_policy NO_WRAP
              --fsdp_state_dict_type FULL_STATE_DICT)
  timeout 120 "$PY" -m accelerate.commands.launch "${FSDP_FLAGS[@]}" --main_process_port 29531 \
    -m ltreg train --method ce --dataset digits-lt --backbone resnet8 --epochs 2 --max-steps-per-epoch 3 \
    --batch-size 32 --output-dir "$OUT/fsdp" --overwrite --mixed-precision bf16 2>&1 | tee "$OUT/fsdp.log"
  test -s "$OUT/fsdp/metrics.json" || { echo "the FSDP run wrote no metrics.json" >&2; false; }
  ls "$OUT/fsdp"
  step "(c) FSDP, one process: is ltreg's model really sharded by FSDP?"
  cat > "$OUT/fsdp_probe.py" <<'EOF'
import sys
from accelerate.utils import DistributedType
import ltreg
from ltreg.config import resolve_config
from ltreg.trainer import Trainer

out = sys.argv[1]
trainer = Trainer(resolve_config(ltreg.get_method("ce"), {
    "dataset": "digits-lt", "backbone": "resnet8", "epochs": 1, "max_steps_per_epoch": 3, "batch_size": 32,
    "mixed_precision": "bf16", "output_dir": out, "overwrite": True}))
acc = trainer.run.accelerator
trainer.fit()
def fsdp(model):
    return any(c.__name__ in ("FullyShardedDataParallel", "FSDPModule") for m in model.modules() for c in type(m).__mro__)
wrapped = any(fsdp(m) for m in acc._models) or fsdp(trainer.run.model)
print(f"accelerate distributed_type {acc.distributed_type}; models prepared by accelerate: {len(acc._models)}; "
      f"FSDP-wrapped: {wrapped}")
if acc.distributed_type != DistributedType.FSDP:
    sys.exit("accelerate did not switch to FSDP under --use_fsdp")
if not wrapped:
    sys.exit("ltreg trained under --use_fsdp, but its model was not wrapped by FSDP: ltreg must pass the model "
             "through accelerator.prepare for FSDP to shard it")
print("FSDP: ltreg's model is wrapped")
EOF
  timeout 120 "$PY" -m accelerate.commands.launch "${FSDP_FLAGS[@]}" --main_process_port 29532 \
    "$OUT/fsdp_probe.py" "$OUT/fsdp_probe"
else
  step "(c) FSDP: skipped in the CPU smoke (accelerate switches to FSDP only on GPU-type devices; on CPU
     --use_fsdp is ignored and would test nothing)"
fi

step "(d) ViT + tuners: memory and step time against full; ltreg + lora against a plain peft loop"
if [ $SMOKE = 0 ]; then
  timeout 420 "$PY" benchmarks/tuners.py --size base --device cuda --precision bf16 --batch-size 128 \
    --epochs 3 --steps 10 --num-workers 8 --strict --json "$OUT/tuners.json"
else
  timeout 420 "$PY" benchmarks/tuners.py --size small --device cpu --epochs 2 --steps 2
fi

step "gpu_check: all checks passed"
echo "total ${SECONDS}s; run folders in $OUT"
