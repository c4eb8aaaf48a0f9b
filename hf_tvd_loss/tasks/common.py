"""What the three task scripts share: the model/data argument dataclasses, the :class:`Task` interface, option
checks, and the run itself (:func:`run_task`), over ``data.py``, ``modeling.py``, ``trainers.py`` and ``report.py``.

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
from .cli import YamlArgumentParser
from .data import FILE_BUILDERS, load_raw_splits
from .modeling import auto_model_class, build_model_from_config, max_positions, resolve_config, train_tokenizer
from .report import print_summary, write_model_card
from .trainers import TaskSeq2SeqTrainer, TaskTrainer

__all__ = [
    "Built",
    "DataArguments",
    "ModelArguments",
    "Prepared",
    "Task",
    "build",
    "prepare",
    "run_task",
    "train_and_evaluate",
    "train_tokenizer",
]

logger = logging.getLogger("hf_tvd_loss.tasks")


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
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Also load pickled (.bin) weights when a model has no safetensors file. Off by default: "
            "unpickling can run code."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow a model/tokenizer repository to run its own Python code when loaded. Off by default: "
            "inputs never run code unless you turn this on for a repository you trust."
        },
    )
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
                tokenizer_name,
                cache_dir=model_args.cache_dir,
                revision=model_args.model_revision,
                trust_remote_code=model_args.trust_remote_code,
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
            model = auto_model_class(task).from_pretrained(
                model_args.model_name_or_path,
                config=config,
                cache_dir=model_args.cache_dir,
                revision=model_args.model_revision,
                trust_remote_code=model_args.trust_remote_code,
                # safetensors where the folder has them; a pickle-only checkpoint needs use_safetensors=None
                use_safetensors=None if model_args.allow_pickle_weights else True,
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"model_name_or_path {model_args.model_name_or_path!r}: {err}") from err
    else:
        positions = max_positions(config)
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
        print_summary(trainer, prepared, predictions_file, time.time() - start)
    return metrics


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
