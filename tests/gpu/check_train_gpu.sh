#!/bin/bash
# GPU check of the training paths CI cannot run (CI has no GPU). On a machine with one CUDA GPU and
# the project installed: `bash tests/gpu/check_train_gpu.sh [OUT_DIR]`. Every model shares the GPU
# (gpus_per_worker=0.2). Each step prints its exit code; OUT_DIR keeps the logs and bundles. The script
# exits 1, naming the failed steps, when any step fails.
#  1. tiny models, all criteria at once, aligners under DeepSpeed ZeRO-2, inspectors on the GPU
#  2. resume under DeepSpeed: one more correction epoch continues from the step-1 checkpoints
#  3. the step-1 bundle through Squad.load(device="cuda") against device="cpu"
#  4. LoRA aligners on ALIGNER_BASE (default: the embedded SmolLM2-135M) under ZeRO-3,
#     fine-tuned inspectors on the GPU
#  5. full fine-tuning of one aligner under ZeRO-3 (gathered 16-bit weights saved as safetensors)
set -u
cd "$(dirname "$0")/../.."
R=$(pwd); O=${1:-/tmp/squad_gpu_check}; B=${ALIGNER_BASE:-smollm2-135m-instruct}
mkdir -p "$O"; export WANDB_MODE=${WANDB_MODE:-disabled}
G="policies=$R/policies evaluate=false storage=$O/runs aligner.scaling.use_gpu=true aligner.scaling.gpus_per_worker=0.2
   aligner.scaling.cpus_per_worker=1 inspector.scaling.use_gpu=true inspector.scaling.gpus_per_worker=0.2
   inspector.scaling.cpus_per_worker=1"
Z2="aligner.deepspeed=$R/configs/deepspeed_zero2.json"; Z3="aligner.deepspeed=$R/configs/deepspeed_zero3.json"
failed=()
step() { local n=$1; shift; "$@" > "$O/$n.log" 2>&1; local rc=$?; echo "step $n: exit $rc"; [ $rc -eq 0 ] || failed+=("$n"); }
step 1 squad train configs/train_tiny.yaml $G output=$O/tiny run_name=z2 $Z2
step 2 squad train configs/train_tiny.yaml $G output=$O/tiny_resumed run_name=z2 aligner.epochs=2 $Z2
step 3 python3 tests/gpu/infer_cpu_vs_cuda.py $O/tiny
step 4 squad train configs/train.yaml $G output=$O/lora_z3 run_name=z3 limit=48 aligner.base=$B aligner.epochs=1 \
  aligner.lora_top_layers=null inspector.base=tiny-encoder inspector.finetune_epochs=1 $Z3
step 5 squad train configs/train.yaml $G output=$O/full_z3 run_name=full limit=24 'criteria=[ethics]' aligner.base=$B \
  aligner.mode=full aligner.epochs=1 aligner.warmup_epochs=0 inspector.base=tiny-encoder inspector.kind=shared $Z3
step 6 python3 tests/gpu/infer_cpu_vs_cuda.py $O/full_z3 --cuda-only
grep -h "same answers\|cuda mem" "$O"/3.log "$O"/6.log
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED steps: ${failed[*]} (logs in $O)" >&2; exit 1; fi
echo "all steps passed"
