"""Loading the raw splits (synthetic corpus, local files or a Hub dataset) and checking them before any training."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from datasets import Dataset, DatasetDict

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from .arguments import DataArguments
    from .base import Task

__all__ = ["FILE_BUILDERS", "SPLITS", "check_columns_present", "load_raw_splits"]

logger = logging.getLogger("hf_tvd_loss.tasks")

SPLITS = ("train", "validation", "test")
# file extension -> datasets builder
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _load_file(path: str, option: str, split: str, cache_dir: str | None) -> Dataset:
    from datasets import load_dataset

    builder = FILE_BUILDERS[os.path.splitext(path)[1].lower()]
    try:
        return load_dataset(builder, data_files={"data": path}, split="data", cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types for malformed files
        if "corresponds to no data" in str(err):
            raise ValueError(f"the {split} split ({option} {path}) is empty: the file has no rows") from err
        raise ValueError(f"{option} {path}: could not be read as {builder}: {type(err).__name__}: {err}") from err


def load_raw_splits(
    task: Task[Any, Any], data_args: DataArguments, training_args: TrainingArguments, cache_dir: str | None
) -> DatasetDict:
    """The splits the run needs (``train`` / ``validation`` / ``test``), capped, with their columns checked."""
    needed = {
        "train": training_args.do_train,
        "validation": training_args.do_eval or training_args.eval_strategy != "no",
        "test": training_args.do_predict,
    }
    source = data_args.data_source()
    splits: dict[str, Dataset] = {}
    origin: dict[str, str] = {}
    if source == "synthetic":
        sizes = {"train": data_args.synthetic_train_examples, "validation": data_args.synthetic_eval_examples,
                 "test": data_args.synthetic_eval_examples}  # fmt: skip
        for index, split in enumerate(SPLITS):
            if needed[split]:
                # A different seed per split: the three splits are disjoint samples of the same generator.
                rows = task.synthetic_rows(split, sizes[split], seed=training_args.seed + 1000 * index)
                splits[split], origin[split] = Dataset.from_list(rows), f"synthetic {task.name} corpus"
    elif source == "files":
        for split, option in zip(SPLITS, ("train_file", "validation_file", "test_file"), strict=True):
            path = getattr(data_args, option)
            if path and needed[split]:
                splits[split], origin[split] = _load_file(path, option, split, cache_dir), f"{option} {path}"
    else:
        from datasets import load_dataset

        try:
            hub = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
        except Exception as err:  # offline, unknown name or config: many exception types
            raise ValueError(
                f"dataset_name {data_args.dataset_name!r} (config {data_args.dataset_config_name!r}) could not be "
                f"loaded: {type(err).__name__}: {err}"
            ) from err
        for split in SPLITS:
            if split in hub and needed[split]:
                splits[split], origin[split] = hub[split], f"dataset {data_args.dataset_name} split {split}"
        if "validation" not in hub and "valid" in hub and needed["validation"]:
            splits["validation"], origin["validation"] = hub["valid"], f"dataset {data_args.dataset_name} split valid"

    if needed["train"] and "train" not in splits:
        raise ValueError(f"do_train is set but the data ({source}) has no train split")
    for split in SPLITS:
        if split in splits and len(splits[split]) == 0:
            raise ValueError(f"the {split} split ({origin[split]}) is empty")
    if needed["validation"] and "validation" not in splits:
        if "train" not in splits:
            raise ValueError("evaluation needs validation_file (or a train split to hold some out)")
        held_out = splits["train"].train_test_split(
            test_size=data_args.validation_split_percentage / 100, seed=training_args.seed
        )
        splits["train"], splits["validation"] = held_out["train"], held_out["test"]
        origin["validation"] = f"{data_args.validation_split_percentage}% of {origin['train']}"
    if needed["test"] and "test" not in splits:
        if "validation" not in splits:
            raise ValueError("do_predict needs test_file or validation_file")
        logger.info("no test split: predicting on the validation split")
        splits["test"], origin["test"] = splits["validation"], origin["validation"] + " (no test split given)"

    caps = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
            "test": data_args.max_predict_samples}  # fmt: skip
    for split, dataset in splits.items():
        if caps[split] is not None and caps[split] < len(dataset):
            splits[split] = dataset.select(range(caps[split]))
        if len(splits[split]) == 0:
            raise ValueError(f"the {split} split ({origin[split]}) is empty")
        task.check_columns(splits[split], split, origin[split], data_args)
    return DatasetDict(splits)


def check_columns_present(dataset: Dataset, split: str, origin: str, columns: dict[str, str]) -> None:
    """``columns`` maps each required column to the option that names it."""
    for column, option in columns.items():
        if column not in dataset.column_names:
            raise ValueError(
                f"the {split} data ({origin}) has no column {column!r} (set by --{option}); its columns are "
                f"{dataset.column_names}"
            )
        feature = dataset.features.get(column)
        dtype = getattr(feature, "dtype", type(feature).__name__)
        if dtype not in ("string", "large_string"):
            raise ValueError(
                f"the {split} data ({origin}): column {column!r} (set by --{option}) must hold text, but holds "
                f"{dtype} values"
            )
