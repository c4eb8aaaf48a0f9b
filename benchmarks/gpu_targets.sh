#!/usr/bin/env bash
# The GPU measurements of the targets in BENCHMARKS.md, in one command, for a machine with one CUDA GPU (an H100
# for those targets). Each of the three runs appends its rows to the results file under the label
# gpu_<name>_<what>; name the labels in bench-table markers of BENCHMARKS.md and regenerate its tables with
# `python -m benchmarks.bench --table`, targets missed included.
#
#   bash benchmarks/gpu_targets.sh                  # appends to benchmarks/results.jsonl
#   RESULTS=out/gpu.jsonl PY=python bash benchmarks/gpu_targets.sh
#   TAG=gpu_h100_rerun bash benchmarks/gpu_targets.sh   # labels must be new to the results file
#
# Needs torch with CUDA, transformers and this package; the kernel variants (cut-cross-entropy, liger-kernel)
# run when those packages are installed (`pip install -e ".[kernels]"`) and are skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NAME=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; \
print(torch.cuda.get_device_name(0).split()[-1].lower())")
RESULTS="${RESULTS:-benchmarks/results.jsonl}"
TAG="${TAG:-gpu_${NAME}}"

# 1. The loss head at the targets' shape: Llama-3 vocabulary, 16384 tokens, d = 4096, bf16. No label smoothing,
#    so that cut-cross-entropy's cross-entropy (which has none) computes the same loss as the baselines.
#    Default variants: every logits and hidden-state variant, plus the cce / liger ones that can run here and
#    PyTorch's own linear_cross_entropy (linear_*_torch_lce).
#    --jobs 1: one memory-measuring subprocess at a time (at this shape one variant can need ~40 GB).
"$PY" -m benchmarks.bench --device cuda --dtype bfloat16 --tokens 16384 --vocab 128256 --hidden 4096 \
    --label-smoothing 0 --repeats 10 --no-train-step --jobs 1 \
    --results "$RESULTS" --run "${TAG}_loss_n16384_v128256_bf16"

# 2. The same with TaiLr's translation setting (label smoothing 0.1): γ-CE against F.cross_entropy with the
#    same smoothing, logits group only.
"$PY" -m benchmarks.bench --device cuda --dtype bfloat16 --tokens 16384 --vocab 128256 --hidden 4096 \
    --repeats 10 --no-train-step --jobs 1 --variants cross_entropy,gamma_ce,tailr_fairseq,dft_trl \
    --results "$RESULTS" --run "${TAG}_logits_n16384_v128256_bf16_ls0.1"

# 3. Training steps: stock Trainer, TVDTrainer (logits), TVDTrainer (loss_impl="chunked", torch backend) on a
#    2-layer Llama with the same vocabulary and width, 8 × 2048 = 16384 tokens per step.
"$PY" -m benchmarks.bench --device cuda --dtype bfloat16 --tokens 16384 --vocab 128256 --hidden 4096 \
    --variants "" --train-batch 8 --train-seq-len 2048 --train-steps 8 \
    --results "$RESULTS" --run "${TAG}_train_n16384_v128256_bf16"
# 4. PyTorch's own torch.nn.functional.linear_cross_entropy as the chunked backend (issue 22.8): its loss-head rows
#    are in run 1 (linear_*_torch_lce); here the training step with chunked_backend torch_linear_ce, to decide
#    whether chunked_backend="auto" should pick it on CUDA (on CPU it takes 2.7x the time of "torch").
"$PY" -m benchmarks.bench --device cuda --dtype bfloat16 --tokens 16384 --vocab 128256 --hidden 4096 \
    --variants "" --train-batch 8 --train-seq-len 2048 --train-steps 8 --chunked-backend torch_linear_ce \
    --results "$RESULTS" --run "${TAG}_train_n16384_v128256_bf16_torch_lce"
echo "rows appended to $RESULTS (runs ${TAG}_*)"
