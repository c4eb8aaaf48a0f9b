"""What the three task scripts share: argument dataclasses, data loading and checks, tokenizer training, model
building, the trainer with calibration metrics, and the run itself (:func:`run_task`).

A run has three phases. :func:`prepare` parses the options (YAML + command line), checks them, loads the data and
checks its columns, loads the pretrained model or resolves the config of a model built from scratch; it writes
nothing, so bad input ends the run before anything exists on disk. :func:`build` creates ``output_dir``, trains a
tokenizer when there is no pretrained one, builds the model, tokenises the data and constructs the trainer (a
problem found there, such as texts too short for one block, removes the folder it created). :func:`train_and_evaluate`
trains, evaluates, predicts and writes the model, metrics, predictions, ``run_info.json`` and a model card.

A task (:class:`Task`, subclassed in ``summarization.py``, ``translation.py``, ``language_modeling.py``) supplies
its data dataclass, default options, synthetic corpus, column checks, preprocessing and metrics.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from datasets import Dataset, DatasetDict

from ..args import TVDArguments
from ..trainer import TVDSeq2SeqTrainer, TVDTrainer
from .cli import YamlArgumentParser
from .metrics import calibration_from_sums, calibration_sums

__all__ = [
    "DataArguments",
    "ModelArguments",
    "Built",
    "Prepared",
    "build",
    "Task",
    "TaskSeq2SeqTrainer",
    "TaskTrainer",
    "prepare",
    "run_task",
    "train_and_evaluate",
    "train_tokenizer",
]

logger = logging.getLogger("hf_tvd_loss.tasks")

SPLITS = ("train", "validation", "test")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@dataclass
class ModelArguments:
    """Which model to train: a pretrained one (Hub name or local folder) or one built from a config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained model to fine-tune: a Hub name or a local folder (from save_pretrained). Leave unset "
            "to build a new model from --config_name or --model_type plus --config_overrides."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "Config (Hub name or local folder/file) of a model built from scratch; --model_type if unset."
        },
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Architecture of a model built from scratch when no --config_name is given (e.g. bart, "
                  "marian, t5, gpt2, llama)."},
    )  # fmt: skip
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value settings applied to the config, e.g. 'd_model=512,encoder_layers=6'. "
            "For a pretrained model only settings that keep the weights' shapes make sense (dropout etc.). Unset "
            "with the task's default model_type: the tiny size of the offline default run (see docs/SCRIPTS.md)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Pretrained tokenizer (Hub name or local folder); defaults to --model_name_or_path. Without "
            "either, a BPE tokenizer is trained on the training data and saved with the model."
        },
    )
    tokenizer_vocab_size: int = field(
        default=8000,
        metadata={"help": "Vocabulary size of a tokenizer trained on the training data (an upper bound: a small "
                  "corpus gives fewer tokens)."},
    )  # fmt: skip
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub models and datasets are cached."})
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit) of the model."}
    )


@dataclass
class DataArguments:
    """Where the data comes from; task subclasses add their column names and lengths."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name (needs network access); exclusive with --train_file etc."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training data: .jsonl/.json, .csv, .parquet (or .txt for LM)."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Local validation data; when absent, --validation_split_percentage of train is held out."},
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Local test data for --do_predict; when absent, the validation data is used."}
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of the training data held out for validation when there is no validation split."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (for quick runs)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation examples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test examples."})
    synthetic_train_examples: int = field(
        default=2000,
        metadata={"help": "Without --dataset_name or --train_file the data is a synthetic corpus generated with a fixed "
                  "seed: this many training examples."},
    )  # fmt: skip
    synthetic_eval_examples: int = field(
        default=100, metadata={"help": "Size of each of the synthetic validation and test splits."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used by datasets.map for tokenisation."}
    )

    def data_source(self) -> str:
        if self.dataset_name:
            return "hub"
        if self.train_file or self.validation_file or self.test_file:
            return "files"
        return "synthetic"


# ----------------------------------------------------------------------------------------------- trainers
class CalibrationMixin:
    """Adds token-level calibration (``ece``, ``confidence``, ``accuracy``) to every evaluation and prediction.

    The teacher-forced logits on the reference tokens are those of the γ-CE evaluation loss: ``compute_loss`` is
    called by the evaluation loop with and without ``predict_with_generate``, so the sums are collected there
    and reduced over all processes after the loop.
    """

    calibration_bins = 10

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        if model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)  # type: ignore[misc]
        logits = outputs.get("logits") if isinstance(outputs, dict) else outputs[0]
        encoder_decoder = bool(getattr(self.accelerator.unwrap_model(model).config, "is_encoder_decoder", False))
        sums = calibration_sums(logits, inputs["labels"], shift=not encoder_decoder, num_bins=self.calibration_bins)
        self._calibration = sums if getattr(self, "_calibration", None) is None else self._calibration + sums
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):  # type: ignore[no-untyped-def]  # noqa: E501
        self._calibration = None
        output = super().evaluation_loop(  # type: ignore[misc]
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        sums = self._calibration
        if sums is None:
            sums = torch.zeros(3, self.calibration_bins, dtype=torch.float64)
        self._calibration = None
        if self.args.world_size > 1:  # a collective: every process runs the evaluation loop
            sums = self.accelerator.gather(sums.to(self.args.device).unsqueeze(0)).sum(0)
        for name, value in calibration_from_sums(sums.cpu()).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output


class TaskTrainer(CalibrationMixin, TVDTrainer):
    """:class:`~hf_tvd_loss.TVDTrainer` with calibration metrics."""


class TaskSeq2SeqTrainer(CalibrationMixin, TVDSeq2SeqTrainer):
    """:class:`~hf_tvd_loss.TVDSeq2SeqTrainer` with calibration metrics."""


# ----------------------------------------------------------------------------------------------- tasks
class Task:
    """One task's pieces. Subclasses set the class attributes and implement the hooks."""

    name: str = ""
    description: str = ""
    data_args_class: type[DataArguments] = DataArguments
    training_args_class: type = object
    auto_model_class: str = ""  # e.g. "AutoModelForSeq2SeqLM"
    head_description: str = ""  # for the error when a model lacks the needed head
    is_seq2seq: bool = False
    defaults: dict[str, Any] = {}  # parser defaults: model, data, TVD and training options
    # Sizes of the default model_type when built from scratch without --config_overrides (a tiny model).
    scratch_config_overrides: str | None = None

    # --- hooks
    def synthetic_rows(self, split: str, num_examples: int, seed: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def check_args(self, data_args: Any, model_args: ModelArguments, training_args: Any) -> None:
        """Task-specific option checks (raise ``ValueError`` naming the option)."""

    def check_columns(self, dataset: Dataset, split: str, origin: str, data_args: Any) -> None:
        raise NotImplementedError

    def texts(self, dataset: Dataset, data_args: Any) -> Iterator[str]:
        """All text of a split, for training a tokenizer."""
        raise NotImplementedError

    def preprocess(self, dataset: Dataset, tokenizer: Any, data_args: Any, training_args: Any, split: str) -> Dataset:
        raise NotImplementedError

    def max_length_needed(self, data_args: Any) -> int:
        """Longest sequence the model must accept (checked against a from-scratch config's positions)."""
        raise NotImplementedError

    def tokenizer_max_length(self, data_args: Any) -> int | None:
        """``model_max_length`` of a trained tokenizer (None: unlimited, e.g. texts that are cut into blocks)."""
        return self.max_length_needed(data_args)

    def data_collator(self, tokenizer: Any, model: Any) -> Callable | None:
        return None

    def compute_metrics(self, tokenizer: Any, data_args: Any) -> Callable | None:
        return None

    def configure_model(self, model: Any, tokenizer: Any, data_args: Any, training_args: Any) -> None:
        """Last settings on the model (e.g. generation), after it is built or loaded."""

    def write_predictions(self, output: Any, tokenizer: Any, output_dir: str) -> str | None:
        return None

    # --- shared
    def build_parser(self) -> YamlArgumentParser:
        parser = YamlArgumentParser(
            (ModelArguments, self.data_args_class, TVDArguments, self.training_args_class),
            description=self.description,
        )
        defaults = dict(self.defaults)
        defaults.setdefault("report_to", ["tensorboard"] if _tensorboard_available() else ["none"])
        # Every parameter gets a gradient in these models; the search for unused ones costs a graph traversal.
        defaults.setdefault("ddp_find_unused_parameters", False)
        defaults.setdefault("dataloader_pin_memory", torch.cuda.is_available())  # pinning needs an accelerator
        parser.set_defaults(**defaults)
        return parser


def _tensorboard_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


# ----------------------------------------------------------------------------------------------- checks
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


def check_common_args(data_args: DataArguments, model_args: ModelArguments, training_args: Any) -> None:
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
        if extension not in _FILE_BUILDERS:
            raise ValueError(
                f"{option} {path}: unsupported extension {extension!r}; use one of {sorted(_FILE_BUILDERS)}"
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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not training_args.use_cpu:
        raise ValueError(
            "launched with several processes but no GPU: pass --use_cpu true, otherwise every process would "
            "silently train alone (see configs/accelerate/cpu_2proc.yaml)"
        )
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ValueError("nothing to do: do_train, do_eval and do_predict are all false")
    check_output_dir(training_args.output_dir)


# ----------------------------------------------------------------------------------------------- data
def _load_file(path: str, option: str, split: str, cache_dir: str | None) -> Dataset:
    from datasets import load_dataset

    builder = _FILE_BUILDERS[os.path.splitext(path)[1].lower()]
    try:
        return load_dataset(builder, data_files={"data": path}, split="data", cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types for malformed files
        if "corresponds to no data" in str(err):
            raise ValueError(f"the {split} split ({option} {path}) is empty: the file has no rows") from err
        raise ValueError(f"{option} {path}: could not be read as {builder}: {type(err).__name__}: {err}") from err


def load_raw_splits(task: Task, data_args: DataArguments, training_args: Any, cache_dir: str | None) -> DatasetDict:
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


# ----------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterator[str], vocab_size: int, model_max_length: int | None = None) -> Any:
    """A byte-fallback-free BPE tokenizer (``tokenizers``) trained on ``texts``, as a ``PreTrainedTokenizerFast``.

    Metaspace pre-tokenisation (as SentencePiece) so that decoding restores the spaces; every encoded sequence ends
    with ``</s>``. Special tokens: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    eos = SPECIAL_TOKENS["eos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))]
    )
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **extra, **SPECIAL_TOKENS)


# ----------------------------------------------------------------------------------------------- model
def _auto_class(task: Task) -> Any:
    import transformers

    return getattr(transformers, task.auto_model_class)


def resolve_config(task: Task, model_args: ModelArguments) -> Any:
    """The model config (pretrained or from scratch), with overrides, checked to have the task's head."""
    from transformers import AutoConfig

    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    name = model_args.model_name_or_path or model_args.config_name
    if name:
        try:
            config = AutoConfig.from_pretrained(name, **hub_kwargs)
        except (OSError, ValueError) as err:
            option = "model_name_or_path" if model_args.model_name_or_path else "config_name"
            raise ValueError(f"{option} {name!r}: no model config could be loaded ({err})") from err
    else:
        try:
            config = AutoConfig.for_model(model_args.model_type)
        except ValueError as err:
            raise ValueError(f"model_type {model_args.model_type!r} is not a known transformers model type") from err
    if model_args.config_overrides is None and not name and model_args.model_type == task.defaults.get("model_type"):
        # The task's default model is tiny (the offline default run); any other model keeps its own sizes.
        model_args.config_overrides = task.scratch_config_overrides
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except ValueError as err:
            raise ValueError(f"config_overrides {model_args.config_overrides!r}: {err}") from err
    auto = _auto_class(task)
    if type(config) not in auto._model_mapping:
        raise ValueError(
            f"a {config.model_type!r} model ({name or model_args.model_type}) has no {task.head_description}: the "
            f"{task.name} task needs a model that {auto.__name__} can load"
        )
    return config


def _max_positions(config: Any) -> int | None:
    for attribute in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    return None


def build_model_from_config(task: Task, config: Any, tokenizer: Any) -> Any:
    """A freshly initialised model whose vocabulary and special tokens are the tokenizer's."""
    config.vocab_size = len(tokenizer)
    if hasattr(config, "decoder_vocab_size"):  # Marian keeps a separate decoder vocabulary size
        config.decoder_vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    if getattr(config, "is_encoder_decoder", False):
        config.decoder_start_token_id = tokenizer.bos_token_id
        if hasattr(config, "forced_eos_token_id"):
            config.forced_eos_token_id = tokenizer.eos_token_id
    return _auto_class(task).from_config(config)


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class Prepared:
    """Everything :func:`prepare` checked and loaded; nothing has been written yet."""

    task: Task
    model_args: ModelArguments
    data_args: DataArguments
    tvd_args: TVDArguments
    training_args: Any
    raw: DatasetDict
    config: Any
    tokenizer: Any | None  # None: trained on the training data in train_and_evaluate
    model: Any | None  # None: built from config in train_and_evaluate
    argv: list[str]


def prepare(task: Task, argv: Sequence[str] | None = None) -> Prepared:
    """Parse and check everything, load data and (pretrained) model. Raises ``ValueError`` naming the problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = task.build_parser()
    model_args, data_args, tvd_args, training_args = parser.parse_args_and_config(argv)
    check_common_args(data_args, model_args, training_args)
    task.check_args(data_args, model_args, training_args)

    raw = load_raw_splits(task, data_args, training_args, model_args.cache_dir)
    config = resolve_config(task, model_args)
    tokenizer, model = None, None
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    if tokenizer_name:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_name, cache_dir=model_args.cache_dir, revision=model_args.model_revision
            )
        except (OSError, ValueError) as err:
            raise ValueError(
                f"no tokenizer could be loaded from {tokenizer_name!r} ({err}); set tokenizer_name"
            ) from err
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"tokenizer {tokenizer_name!r} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
    if model_args.model_name_or_path:
        try:
            model = _auto_class(task).from_pretrained(
                model_args.model_name_or_path,
                config=config,
                cache_dir=model_args.cache_dir,
                revision=model_args.model_revision,
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"model_name_or_path {model_args.model_name_or_path!r}: {err}") from err
    else:
        positions = _max_positions(config)
        needed = task.max_length_needed(data_args)
        if positions is not None and positions < needed and not getattr(config, "rotary_emb_base", None):
            raise ValueError(
                f"the model config allows {positions} positions but the data options need {needed}: raise "
                "max_position_embeddings/n_positions in config_overrides or lower the length options"
            )
    return Prepared(task, model_args, data_args, tvd_args, training_args, raw, config, tokenizer, model, argv)


def _texts_for_tokenizer(task: Task, prepared: Prepared) -> Iterator[str]:
    yield from task.texts(prepared.raw["train"] if "train" in prepared.raw else next(iter(prepared.raw.values())),
                          prepared.data_args)  # fmt: skip


@dataclass
class Built:
    """The trainer and what it was built from; ``created_output_dir`` says whether this run made the folder."""

    trainer: Any
    tokenizer: Any
    datasets: dict[str, Dataset]
    created_output_dir: bool
    start: float


def build(prepared: Prepared) -> Built:
    """Create output_dir, train a tokenizer if needed, build the model, preprocess, construct the trainer.

    A ``ValueError`` here (e.g. texts too short for one block) removes the output_dir this run created, so a refused
    run leaves nothing behind.
    """
    training_args = prepared.training_args
    output_dir = training_args.output_dir
    created = not os.path.exists(output_dir)
    start = time.time()
    try:
        return _build(prepared, created, start)
    except ValueError:
        if created and training_args.process_index == 0:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def _build(prepared: Prepared, created: bool, start: float) -> Built:
    from transformers import set_seed

    task, data_args, training_args = prepared.task, prepared.data_args, prepared.training_args
    model_args = prepared.model_args
    output_dir = training_args.output_dir
    set_seed(training_args.seed)
    is_main = training_args.process_index == 0
    if is_main:
        os.makedirs(output_dir, exist_ok=True)

    tokenizer = prepared.tokenizer
    if tokenizer is None:
        from transformers import AutoTokenizer

        # The main process trains and saves the tokenizer; the others then load that same file.
        tokenizer_dir = os.path.join(output_dir, "tokenizer")
        with training_args.main_process_first(desc="training a tokenizer"):
            if is_main:
                tokenizer = train_tokenizer(
                    _texts_for_tokenizer(task, prepared),
                    model_args.tokenizer_vocab_size,
                    model_max_length=task.tokenizer_max_length(data_args),
                )
                tokenizer.save_pretrained(tokenizer_dir)
            else:
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        logger.info("trained a BPE tokenizer with %d tokens on the training data", len(tokenizer))

    model = prepared.model
    if model is None:
        model = build_model_from_config(task, prepared.config, tokenizer)
    elif len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    task.configure_model(model, tokenizer, data_args, training_args)

    datasets: dict[str, Dataset] = {}
    for split, raw in prepared.raw.items():
        with training_args.main_process_first(desc=f"preprocessing {split}"):
            datasets[split] = task.preprocess(raw, tokenizer, data_args, training_args, split)
        if len(datasets[split]) == 0:
            raise ValueError(f"the {split} split has no usable examples after preprocessing")

    trainer_cls = TaskSeq2SeqTrainer if task.is_seq2seq else TaskTrainer
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=datasets.get("train"),
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=task.data_collator(tokenizer, model),
        compute_metrics=task.compute_metrics(tokenizer, data_args),
        tvd_args=prepared.tvd_args,
    )
    return Built(trainer, tokenizer, datasets, created, start)


def train_and_evaluate(prepared: Prepared, built: Built | None = None) -> dict[str, Any]:
    """Train, evaluate, predict and save; returns the metrics (also written to ``all_results.json``)."""
    built = built if built is not None else build(prepared)
    task, training_args = prepared.task, prepared.training_args
    trainer, tokenizer, datasets, start = built.trainer, built.tokenizer, built.datasets, built.start
    output_dir = training_args.output_dir

    metrics: dict[str, Any] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.save_state()
        train_metrics = dict(result.metrics, train_samples=len(datasets["train"]))
        trainer.save_metrics("train", train_metrics)
        metrics.update(train_metrics)
    if "validation" in datasets:
        eval_metrics = trainer.evaluate(metric_key_prefix="eval")
        eval_metrics["eval_samples"] = len(datasets["validation"])
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    predictions_file = None
    if training_args.do_predict:
        output = trainer.predict(datasets["test"], metric_key_prefix="test")
        test_metrics = dict(output.metrics, test_samples=len(datasets["test"]))
        trainer.save_metrics("test", test_metrics)
        metrics.update(test_metrics)
        if trainer.is_world_process_zero():
            predictions_file = task.write_predictions(output, tokenizer, output_dir)
    if not training_args.do_train:
        trainer.save_model()  # evaluation-only runs still leave a complete model folder (a collective call)

    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics, combined=False)
        info = {
            "task": task.name,
            "world_size": training_args.world_size,
            "device": str(training_args.device),
            "seconds": round(time.time() - start, 1),
            "argv": prepared.argv,
            "data": prepared.data_args.data_source(),
            "tvd_args": asdict(prepared.tvd_args),
        }
        with open(os.path.join(output_dir, "run_info.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        write_model_card(prepared, metrics, tokenizer_trained=prepared.tokenizer is None)
        _print_summary(trainer, prepared, predictions_file, time.time() - start)
    return metrics


def _tensorboard_dir(trainer: Any) -> str | None:
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            return getattr(callback, "logging_dir", None)
    return None


def _print_summary(trainer: Any, prepared: Prepared, predictions_file: str | None, seconds: float) -> None:
    out = prepared.training_args.output_dir
    rows = [
        ("model + tokenizer", out),
        ("metrics", os.path.join(out, "all_results.json")),
        ("training log", os.path.join(out, "trainer_state.json")),
        ("model card", os.path.join(out, "README.md")),
    ]
    if predictions_file:
        rows.append(("predictions", predictions_file))
    tensorboard = _tensorboard_dir(trainer)
    if tensorboard:
        rows.append(("TensorBoard logs", tensorboard))
    width = max(len(name) for name, _ in rows)
    print(
        f"\n[hf_tvd_loss] {prepared.task.name}: done in {seconds:.1f} s on {prepared.training_args.world_size} "
        "process(es)"
    )
    for name, path in rows:
        print(f"  {name:<{width}}  {path}")
    sys.stdout.flush()


def _format_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_model_card(prepared: Prepared, metrics: dict[str, Any], *, tokenizer_trained: bool) -> str:
    """``README.md`` in output_dir: the loss and its γ, b, ε, the model, data, training settings and metrics."""
    tvd, args, model_args = prepared.tvd_args, prepared.training_args, prepared.model_args
    focal = getattr(tvd, "loss_type", "gamma_ce") == "focal"
    baseline = tvd.gamma == 0 and tvd.gamma_schedule == "constant"
    if focal:
        loss_name = f"token-level focal loss (baseline; focal_gamma={tvd.focal_gamma}, focal_alpha={tvd.focal_alpha})"
    elif baseline:
        loss_name = "cross-entropy (γ = 0: the MLE baseline)"
    else:
        loss_name = "token-level γ-cross-entropy (TaiLr)"
    if model_args.model_name_or_path:
        model_line = f"fine-tuned from `{model_args.model_name_or_path}`"
    else:
        source = (
            f"config `{model_args.config_name}`" if model_args.config_name else f"model type `{model_args.model_type}`"
        )
        overrides = f" with `{model_args.config_overrides}`" if model_args.config_overrides else ""
        model_line = f"trained from scratch: {source}{overrides}"
    data = prepared.data_args
    if data.dataset_name:
        data_line = f"Hub dataset `{data.dataset_name}`" + (
            f" ({data.dataset_config_name})" if data.dataset_config_name else ""
        )
    elif data.data_source() == "files":
        data_line = ", ".join(f"{name}: `{os.path.basename(path)}`" for name, path in
                              (("train", data.train_file), ("validation", data.validation_file),
                               ("test", data.test_file)) if path)  # fmt: skip
    else:
        data_line = (
            f"synthetic {prepared.task.name} corpus generated by `hf_tvd_loss.tasks.synthetic` (seed {args.seed})"
        )
    schedule = (
        "constant"
        if tvd.gamma_schedule == "constant"
        else f"{tvd.gamma_schedule} from {tvd.gamma_start} (ratio {tvd.gamma_schedule_ratio}, steps {tvd.gamma_schedule_steps})"
    )
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [hf_tvd_loss, tailr, {prepared.task.name}]",
        "---",
        "",
        f"# {prepared.task.name} model trained with {loss_name}",
        "",
        "## Loss",
        "",
        "Token-level γ-cross-entropy from TaiLr (Ji et al., *Tailoring Language Generation Models under Total "
        "Variation Distance*, ICLR 2023), as implemented by `hf_tvd_loss`: per target token with probability p, "
        "`loss = (1-ε)·w·(-log p) + (ε/V)·Σ_v(-log p_v)` with `w = clamp(p / (γ + (1-γ)p), b, 1)` (no gradient "
        "through w)." + (" This run used the focal-loss baseline instead (γ and b unused)." if focal else ""),
        "",
        "| setting | value |",
        "|---|---|",
        f"| γ (gamma) | {tvd.gamma} |",
        f"| b (min_weight) | {tvd.min_weight} |",
        f"| ε (label_smoothing) | {tvd.label_smoothing} |",
        f"| γ schedule | {schedule} |",
        "",
        "## Model and data",
        "",
        f"- Model: {model_line}" + ("; tokenizer: BPE trained on the training data" if tokenizer_trained else ""),
        f"- Data: {data_line}",
        f"- Training: {args.num_train_epochs:g} epoch(s)"
        + (f", max_steps {args.max_steps}" if args.max_steps and args.max_steps > 0 else "")
        + f", learning rate {args.learning_rate:g} ({scheduler}), {args.per_device_train_batch_size} "
        f"per device × {args.gradient_accumulation_steps} accumulation × {args.world_size} process(es), seed "
        f"{args.seed}",
        "",
        "## Results (this run)",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {_format_metric(value)} |" for name, value in sorted(metrics.items())),
        "",
        "## Command",
        "",
        "```",
        " ".join([os.path.basename(sys.argv[0]) or "script", *prepared.argv]),
        "```",
        "",
    ]
    path = os.path.join(args.output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


def run_task(task: Task, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of the scripts: bad input exits with status 2 and one ``error:`` line before anything is written."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hf_tvd_loss").setLevel(logging.INFO)
    try:
        prepared = prepare(task, argv)
        built = build(prepared)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return train_and_evaluate(prepared, built)
