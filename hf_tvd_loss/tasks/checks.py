"""Option checks every task shares, run before any data or model is loaded and before anything is written."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .arguments import DataArguments, ModelArguments
from .data import FILE_BUILDERS

if TYPE_CHECKING:
    from transformers import TrainingArguments

__all__ = ["check_common_args", "check_output_dir"]


def check_output_dir(path: str) -> None:
    """Refuse an output_dir that cannot be created or written, without creating anything."""
    if not path:
        raise ValueError("output_dir must be set")
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"output_dir {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"output_dir {path} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"output_dir {path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir {path} cannot be created: {parent} is not writable")


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_common_args(data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """The checks every task shares, before anything is loaded; ``ValueError`` names the option."""
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "synthetic_train_examples",
                 "synthetic_eval_examples", "preprocessing_num_workers"):  # fmt: skip
        _check_positive(name, getattr(data_args, name))
    _check_positive("tokenizer_vocab_size", model_args.tokenizer_vocab_size)
    if not 0 < data_args.validation_split_percentage < 100:
        raise ValueError(
            f"validation_split_percentage must be in (0, 100), got {data_args.validation_split_percentage!r}"
        )
    files = [f for f in (data_args.train_file, data_args.validation_file, data_args.test_file) if f]
    if data_args.dataset_name and files:
        raise ValueError("give either dataset_name (Hub) or train_file/validation_file/test_file (local), not both")
    for option in ("train_file", "validation_file", "test_file"):
        path = getattr(data_args, option)
        if path is None:
            continue
        extension = os.path.splitext(path)[1].lower()
        if extension not in FILE_BUILDERS:
            raise ValueError(
                f"{option} {path}: unsupported extension {extension!r}; use one of {sorted(FILE_BUILDERS)}"
            )
        if not os.path.isfile(path):
            raise ValueError(f"{option}: file not found: {path}")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{option} {path}: the file is empty")
    if training_args.do_train and data_args.data_source() == "files" and not data_args.train_file:
        raise ValueError("do_train needs train_file (or dataset_name); pass --do_train false to only evaluate")
    if training_args.label_smoothing_factor:
        raise ValueError(
            "label_smoothing_factor must be 0: set the γ-CE loss's own --label_smoothing instead (it is combined "
            "with the weighted term as in the official TaiLr criterion)"
        )
    if model_args.model_name_or_path is None and model_args.config_name is None and not model_args.model_type:
        raise ValueError("set model_name_or_path (pretrained), config_name or model_type (built from scratch)")
    use_cpu = training_args.use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not use_cpu:
        raise ValueError(
            "launched with several processes but no GPU: pass --use_cpu true (or set ACCELERATE_USE_CPU=1), "
            "otherwise every process would silently train alone (see configs/accelerate/cpu_2proc.yaml)"
        )
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ValueError("nothing to do: do_train, do_eval and do_predict are all false")
    check_output_dir(training_args.output_dir)
