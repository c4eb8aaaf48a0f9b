"""Option checks every task shares, run before any data or model is loaded and before anything is written."""

from __future__ import annotations

import json
import math
import os
import re
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoints import run_can_be_finished
from ..ops.common import check_number
from .arguments import DataArguments, ModelArguments
from .data import FILE_BUILDERS, FILE_OPTIONS, evaluates
from .outputs import check_output_dir, overwrite_problem

if TYPE_CHECKING:
    from transformers import TrainingArguments

__all__ = [
    "check_checkpoint_pieces",
    "check_common_args",
    "check_configured_objects",
    "check_model_config",
    "check_options_take_effect",
    "check_unapplied_options",
    "check_finite_options",
    "check_launcher_environment",
    "check_model_sources",
    "check_output_dir",
    "check_paths",
    "check_training_numbers",
]


def _checkpoint_step(path: str) -> int | None:
    import json

    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            step = json.load(f).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def is_inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


# report_to integration -> the packages that provide it (any one of them)
REPORTING_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",), "clearml": ("clearml",), "dvclive": ("dvclive",), "neptune": ("neptune",),
    "codecarbon": ("codecarbon",), "trackio": ("trackio",), "swanlab": ("swanlab",), "azure_ml": ("azureml",),
    "flyte": ("flytekit",), "dagshub": ("dagshub",),
}  # fmt: skip


def optimizer_packages(optim: str) -> list[tuple[str, str]]:
    """The (module, pip name) pairs transformers' ``--optim`` ``optim`` imports when training starts."""
    needs = []
    prefixes = (("galore", "galore_torch", "galore-torch"), ("lomo", "lomo_optim", "lomo-optim"),
                ("adalomo", "lomo_optim", "lomo-optim"), ("grokadamw", "grokadamw", "grokadamw"),
                ("schedule_free", "schedulefree", "schedulefree"), ("apollo", "apollo_torch", "apollo-torch"),
                ("stable_adamw", "optimi", "torch-optimi"), ("adamw_anyprecision", "torchdistx", "torchdistx"),
                ("adamw_torch_xla", "torch_xla", "torch_xla"), ("adamw_torch_npu", "torch_npu", "torch_npu"),
                ("adamw_torch_4bit", "torchao", "torchao"), ("adamw_torch_8bit", "torchao", "torchao"))  # fmt: skip
    needs += [(module, dist) for prefix, module, dist in prefixes if optim.startswith(prefix)]
    bitsandbytes = (
        optim.startswith(("paged_", "ademamix", "lion"))
        or "bnb" in optim
        or (("8bit" in optim or "32bit" in optim) and not optim.startswith("adamw_torch_"))
    )
    if bitsandbytes:
        needs.append(("bitsandbytes", "bitsandbytes"))
    return needs


def check_options_take_effect(data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Refuse options that this run would not apply, or that transformers would reject only once training started:
    each would otherwise be silently ignored (or fail after the data and model work)."""
    import importlib.util

    if training_args.fp16 and not torch.cuda.is_available():
        raise ValueError("--fp16 needs a CUDA GPU and this machine has none, so the run would train in float32: "
                         "remove --fp16 (or use --bf16 true, which works on a CPU)")  # fmt: skip
    if training_args.load_best_model_at_end and not training_args.do_train:
        raise ValueError("--load_best_model_at_end applies to training, and do_train is false: remove it")
    if training_args.load_best_model_at_end and "no" in (training_args.eval_strategy, training_args.save_strategy):
        raise ValueError(
            "--load_best_model_at_end needs evaluations and checkpoints during training to choose from, but "
            f"eval_strategy is {training_args.eval_strategy!s} and save_strategy is {training_args.save_strategy!s}: "
            "set both (e.g. to steps) or remove --load_best_model_at_end"
        )
    if data_args.test_file and not training_args.do_predict:
        raise ValueError(f"--test_file {data_args.test_file} would never be read: do_predict is false; pass "
                         "--do_predict true or remove --test_file")  # fmt: skip
    for name in training_args.report_to or []:
        packages = REPORTING_PACKAGES.get(name)
        if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ValueError(f"--report_to {name} needs the {packages[0]} package, which is not installed: "
                             f"pip install {packages[0]}, or pass --report_to none")  # fmt: skip
    optim = str(getattr(training_args.optim, "value", training_args.optim))
    missing = [dist for module, dist in optimizer_packages(optim) if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(f"--optim {optim} needs the {' and '.join(missing)} package(s), which are not installed: "
                         f"pip install {' '.join(missing)}, or use --optim adamw_torch")  # fmt: skip
    if training_args.push_to_hub and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ValueError("--push_to_hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set: the upload would fail "
                         "after training; remove --push_to_hub or unset HF_HUB_OFFLINE")  # fmt: skip


def check_unapplied_options(
    data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments, given: frozenset[str]
) -> None:
    """Refuse an option the user set (``given``: command line or YAML, whatever the value) that this run would not
    apply, naming it and what makes it idle.

    Options left at their defaults are never refused: only what the user asked for and would silently not get.
    """

    def idle(name: str, why: str) -> ValueError:
        return ValueError(f"--{name} would not take effect: {why}; remove it (from the command line or --config)")

    source = data_args.data_source()
    for name in ("tokenizer_vocab_size", "tokenizer_type"):
        if name in given and (model_args.tokenizer_name or model_args.model_name_or_path):
            which = "tokenizer_name" if model_args.tokenizer_name else "model_name_or_path"
            raise idle(name, f"a tokenizer is trained only when none is given, and --{which} gives one")
    for name in ("synthetic_train_examples", "synthetic_eval_examples"):
        if name in given and source != "synthetic":
            raise idle(name, f"it sizes the built-in synthetic corpus, and the data come from {source}")
    if "validation_split_percentage" in given:
        if data_args.validation_file:
            raise idle("validation_split_percentage", "--validation_file gives the validation split")
        if source == "synthetic":
            raise idle("validation_split_percentage", "the synthetic corpus has its own validation split")
        if not evaluates(training_args):
            raise idle("validation_split_percentage", "nothing is evaluated (do_eval is false, eval_strategy no)")
    if (
        "save_total_limit" in given
        and training_args.save_total_limit is not None
        and training_args.save_strategy == "no"
    ):
        raise idle("save_total_limit", "save_strategy is no, so no checkpoint is saved")


# Sizes beyond any sane run: 2**20 examples per device and step, or micro-batches per step (a run of that size would
# not fit in any memory; transformers failed only once training started, with an islice() or a memory error).
MAX_BATCH = 2**20

# The numeric options of TrainingArguments / Seq2SeqTrainingArguments the scripts expose: (name, check_number
# keywords). NaN and infinity are refused for all of them (and for every other float option, see
# check_finite_options).
TRAINING_NUMBERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("learning_rate", {"low": 0.0, "low_open": True}),
    ("per_device_train_batch_size", {"low": 1, "high": MAX_BATCH, "integer": True}),
    ("per_device_eval_batch_size", {"low": 1, "high": MAX_BATCH, "integer": True}),
    ("gradient_accumulation_steps", {"low": 1, "high": MAX_BATCH, "integer": True}),
    ("eval_accumulation_steps", {"low": 1, "high": MAX_BATCH, "integer": True, "allow_none": True}),
    ("num_train_epochs", {"low": 0.0}),
    ("warmup_steps", {"low": 0.0}),
    ("weight_decay", {"low": 0.0}),
    ("max_grad_norm", {"low": 0.0}),
    ("adam_beta1", {"low": 0.0, "high": 1.0, "high_open": True}),
    ("adam_beta2", {"low": 0.0, "high": 1.0, "high_open": True}),
    ("adam_epsilon", {"low": 0.0}),
    ("logging_steps", {"low": 0.0, "low_open": True}),
    ("save_total_limit", {"low": 1, "integer": True, "allow_none": True}),
    ("dataloader_num_workers", {"low": 0, "integer": True}),
    ("generation_max_length", {"low": 1, "integer": True, "allow_none": True}),
    ("generation_num_beams", {"low": 1, "integer": True, "allow_none": True}),
)


def check_training_numbers(training_args: TrainingArguments) -> None:
    """Types, ranges and combinations of the Trainer's numeric options; ``ValueError`` names the option."""
    for name, rule in TRAINING_NUMBERS:
        if hasattr(training_args, name):
            check_number(name, getattr(training_args, name), **rule)
    for name in ("seed", "data_seed"):
        value = getattr(training_args, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32):
            raise ValueError(f"{name} must be an integer in [0, 2**32 - 1] (numpy's limit), got {value!r}")
    max_steps = training_args.max_steps
    check_number("max_steps", max_steps, integer=True)
    if max_steps == 0 or max_steps < -1:
        raise ValueError(
            f"max_steps must be a positive number of optimisation steps, or -1 to train for num_train_epochs; got "
            f"{max_steps}"
        )
    if training_args.do_train and max_steps == -1 and training_args.num_train_epochs == 0:
        raise ValueError(
            "num_train_epochs is 0 and max_steps is not set: nothing would be trained; give num_train_epochs > 0 "
            "or max_steps > 0, or --do_train false to only evaluate"
        )
    for name, strategy in (("save_steps", "save_strategy"), ("eval_steps", "eval_strategy")):
        value = getattr(training_args, name)
        if getattr(training_args, strategy) == "steps":  # a str enum, compared like eval_strategy elsewhere
            check_number(name, value, low=0.0, low_open=True, allow_none=name == "eval_steps")


def check_finite_options(*dataclass_objects: Any) -> None:
    """No float option of any parsed dataclass may be NaN or infinite (``--length_penalty nan`` etc.)."""
    import dataclasses

    for obj in dataclass_objects:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def has_accelerator() -> bool:
    """Whether torch sees a GPU (CUDA or another accelerator backend)."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ENV_VARIABLE = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_URL_ADVICE = {
    "output_dir": "train into a local folder and copy it afterwards (fsspec, huggingface-cli upload, aws s3 cp, ...)",
    "resume_from_checkpoint": "copy the checkpoint folder to a local path first",
    "model_name_or_path": "give a Hub id (e.g. HuggingFaceTB/SmolLM2-135M) or a local folder",
    "config_name": "give a Hub id or a local folder",
    "tokenizer_name": "give a Hub id or a local folder",
    "cache_dir": "give a local folder",
}


def check_path_value(option: str, value: str) -> str:
    """One rule for every path option, on the command line and in YAML: a path is what the user wrote.

    A URL (``s3://``, ``gs://``, ``hf://``, ``https://``, ``file://``) is refused: these scripts read and write
    local paths, and transformers' Trainer saves checkpoints and models with local file operations, not through
    fsspec (a URL would become a local folder named ``s3:``). A path that exists as written is used as written,
    whatever characters it holds. Otherwise a leading ``~`` is expanded to the home folder (as the shell does, and as
    transformers does for ``output_dir``), and a value that still starts or ends with whitespace, or holds an
    environment variable (``$HOME``, ``${DATA}``: never expanded), is refused. Returns the value to use."""
    url = _URL.match(value)
    if url:
        advice = _URL_ADVICE.get(option, "download it first (or give a Hub dataset with --dataset_name)")
        raise ValueError(
            f"--{option} {value}: a URL ({url.group(1)}://) is not supported: the scripts read and write local paths "
            f"only (transformers' Trainer writes its checkpoints and model with local file operations, not through "
            f"fsspec); {advice}"
        )
    if os.path.lexists(value):
        return value
    if value.startswith("~"):
        expanded = os.path.expanduser(value)
        if expanded.startswith("~"):
            user = value[1:].split("/", 1)[0]
            raise ValueError(
                f"--{option} {value}: {('~' + user)!r} names no user's home folder on this machine (a leading ~ is "
                "expanded as the shell does); write the path out"
            )
        value = expanded
        if os.path.lexists(value):
            return value
    if value != value.strip():
        raise ValueError(
            f"--{option} {value!r} starts or ends with whitespace, and nothing of that name exists: a path is used as "
            "written (whitespace is not stripped); remove the whitespace, or create the file or folder of that name"
        )
    variable = _ENV_VARIABLE.search(value)
    if variable:
        raise ValueError(
            f"--{option} {value}: {variable.group(0)} looks like an environment variable, and environment variables "
            "are not expanded (in YAML nor in a quoted argument); let the shell expand it (unquoted on the command "
            "line) or write the path out"
        )
    return value


def check_paths(data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """:func:`check_path_value` for every path option; the (``~``-expanded) values are set back."""
    for holder, names in (
        (training_args, ("output_dir", "resume_from_checkpoint")),
        (data_args, FILE_OPTIONS),
        (model_args, ("model_name_or_path", "config_name", "tokenizer_name", "cache_dir")),
    ):
        for name in names:
            value = getattr(holder, name, None)
            if not isinstance(value, str) or not value:
                continue
            if name == "resume_from_checkpoint" and value.strip().lower() in ("latest", "true"):
                continue
            checked = check_path_value(name, value)
            if checked != value:
                setattr(holder, name, checked)


LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def check_launcher_environment() -> None:
    """A launcher (``torchrun``, ``accelerate launch``) sets all of WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT. Some of them without the others were not set by one (left over in a shell, a job script): refused,
    naming them, instead of a rendezvous error, a hang, or a process that trains as one rank of a group that does
    not exist."""
    present = [name for name in LAUNCHER_VARIABLES if name in os.environ]
    if not present or len(present) == len(LAUNCHER_VARIABLES):
        return
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    shown = ", ".join(f"{name}={os.environ[name]}" for name in present)
    raise ValueError(
        f"the environment sets {shown} but not {', '.join(missing)}: no launcher set them (torchrun and accelerate "
        "launch set all five); unset them for a one-process run (python scripts/...), or start the run with "
        "accelerate launch / torchrun"
    )


def check_common_args(data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """The checks every task shares, before anything is loaded; ``ValueError`` names the option. In order: the
    paths as written, the numbers, the data files, the combinations of options, then the output folder and the
    checkpoint to resume."""
    check_paths(data_args, model_args, training_args)
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "synthetic_train_examples",
                 "synthetic_eval_examples", "preprocessing_num_workers"):  # fmt: skip
        _check_positive(name, getattr(data_args, name))
    _check_positive("tokenizer_vocab_size", model_args.tokenizer_vocab_size)
    if model_args.tokenizer_vocab_size < 16:
        raise ValueError(
            f"tokenizer_vocab_size must be at least 16 (4 special tokens plus the corpus's characters), got "
            f"{model_args.tokenizer_vocab_size}"
        )
    check_number("max_dropped_fraction", data_args.max_dropped_fraction, low=0.0, high=1.0)
    check_finite_options(data_args, model_args, training_args)
    check_training_numbers(training_args)
    if not 0 < data_args.validation_split_percentage < 100:
        raise ValueError(
            f"validation_split_percentage must be in (0, 100), got {data_args.validation_split_percentage!r}"
        )
    check_data_files(data_args)
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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator() and not use_cpu:
        raise ValueError(
            "launched with several processes but no GPU: pass --use_cpu true (or set ACCELERATE_USE_CPU=1), "
            "otherwise every process would silently train alone (see configs/accelerate/cpu_2proc.yaml)"
        )
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ValueError("nothing to do: do_train, do_eval and do_predict are all false")
    check_output_and_resume(data_args, model_args, training_args)


def check_model_sources(model_args: ModelArguments) -> None:
    """With the Hub offline (``HF_HUB_OFFLINE=1``), a ``model_name_or_path`` / ``config_name`` / ``tokenizer_name``
    that is neither a local file or folder nor in the local Hub cache cannot be loaded: say so before anything
    starts (transformers would report a failed connection to huggingface.co, which a mistyped local folder is not)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if not constants.HF_HUB_OFFLINE:
        return
    cache = model_args.cache_dir or constants.HF_HUB_CACHE  # --cache_dir is where transformers looks, when given
    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        value = getattr(model_args, name)
        if not value or os.path.exists(os.path.expanduser(value)):
            continue
        try:
            folder = repo_folder_name(repo_id=value, repo_type="model")
        except ValueError:  # HFValidationError: not the shape of a Hub id, so never in the cache
            folder = None
        if folder is not None and os.path.isdir(os.path.join(cache, folder)):
            continue  # a Hub id downloaded earlier: transformers reads it from the cache
        raise ValueError(
            f"{name} {value!r}: no such local file or folder, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"
            f" with no cached copy of that id in {cache}; give a local checkpoint folder (e.g. "
            "python scripts/prepare_model.py --output_dir models/smollm2-135m-instruct) or unset HF_HUB_OFFLINE"
        )


def check_data_files(data_args: DataArguments) -> None:
    """``train_file`` / ``validation_file`` / ``test_file``: not beside ``dataset_name``, a file (not a folder) of a
    supported kind, present and not empty."""
    files = [f for f in (data_args.train_file, data_args.validation_file, data_args.test_file) if f]
    if data_args.dataset_name and files:
        raise ValueError("give either dataset_name (Hub) or train_file/validation_file/test_file (local), not both")
    for option in FILE_OPTIONS:
        path = getattr(data_args, option)
        if path is None:
            continue
        if os.path.islink(path) and not os.path.exists(path):
            raise ValueError(f"{option} {path} is a symbolic link to {os.readlink(path)}, which does not exist")
        if os.path.isdir(path):
            raise ValueError(f"{option} {path} is a directory; give a data file")
        if os.path.exists(path) and not os.path.isfile(path):
            import stat

            mode = os.stat(path).st_mode
            kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                    else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")  # fmt: skip
            target = f" ({os.path.realpath(path)})" if os.path.islink(path) else ""
            raise ValueError(f"{option} {path}{target} is not a regular file but {kind}; give a data file")
        extension = os.path.splitext(path)[1].lower()
        if extension not in FILE_BUILDERS and extension.strip() in FILE_BUILDERS:
            raise ValueError(
                f"{option} {path!r}: its extension {extension!r} ends with whitespace, so the file's format is not "
                f"known (a path is used as written); rename the file to end in {extension.strip()!r}"
            )
        if extension not in FILE_BUILDERS:
            raise ValueError(
                f"{option} {path}: unsupported extension {extension!r}; use one of {sorted(FILE_BUILDERS)}"
            )
        if not os.path.isfile(path):
            raise ValueError(f"{option}: file not found: {path}")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{option} {path}: the file is empty")


def check_output_and_resume(
    data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments
) -> None:
    """``output_dir`` can be written and holds nothing this run would overwrite (unless resumed or overwritten, and
    then only what an earlier run recorded); ``resume_from_checkpoint`` resolved to a usable checkpoint folder (set
    on ``training_args``), with steps left to train."""
    from ..checkpoints import resolve_resume_checkpoint

    check_output_dir(training_args.output_dir, overwrite=True)  # only whether it can be written; emptiness below
    output_dir = os.path.abspath(training_args.output_dir)
    resume_value = training_args.resume_from_checkpoint
    check_resume_value(resume_value)
    resume = resolve_resume_checkpoint(resume_value, training_args.output_dir)  # "latest"/"true": newest complete
    if resume is not None:
        check_checkpoint_pieces(resume)
    if resume is not None and not training_args.do_train:
        raise ValueError(f"resume_from_checkpoint={resume_value!r} needs do_train (nothing is trained otherwise)")
    # Resuming from a checkpoint inside output_dir continues the run there; one from elsewhere starts a new run.
    resume_inside = resume is not None and is_inside(resume, output_dir)
    if resume_inside and data_args.overwrite_output_dir:
        raise ValueError(
            f"overwrite_output_dir and resume_from_checkpoint={resume_value!r} contradict each other: resuming "
            f"continues the run in output_dir ({resume}), overwriting would remove it; pass one of them"
        )
    if data_args.overwrite_output_dir:
        inputs = {"model_name_or_path": model_args.model_name_or_path, "tokenizer_name": model_args.tokenizer_name,
                  "config_name": model_args.config_name, "train_file": data_args.train_file,
                  "validation_file": data_args.validation_file, "test_file": data_args.test_file,
                  "resume_from_checkpoint": resume}  # fmt: skip
        for option, value in inputs.items():
            if value and os.path.exists(value) and is_inside(value, output_dir):
                raise ValueError(
                    f"--overwrite_output_dir would remove the earlier run in {output_dir}, but {option} {value} is "
                    "read from inside it; choose another --output_dir"
                )
    check_output_dir(training_args.output_dir, overwrite=data_args.overwrite_output_dir, resume=resume_inside)
    if data_args.overwrite_output_dir:
        problem = overwrite_problem(output_dir)
        if problem is not None:
            raise ValueError(problem)
    if resume is not None and training_args.max_steps > 0:
        done = _checkpoint_step(resume)
        if (
            done is not None
            and done >= training_args.max_steps
            and not run_can_be_finished(resume, output_dir, training_args.max_steps)  # killed after its last step
        ):
            raise ValueError(
                f"resume_from_checkpoint {resume} is at step {done}, and max_steps={training_args.max_steps}: nothing "
                "is left to train; raise max_steps"
            )
    training_args.resume_from_checkpoint = resume


# ------------------------------------------------------------------------------- what an option configures, built now
def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_scheduler(training_args: TrainingArguments) -> None:
    """Build ``--lr_scheduler_type`` with ``--lr_scheduler_kwargs`` on a dummy optimizer, as Trainer does when
    training starts (with this run's max_steps, or 100 steps when they depend on the data)."""
    from .applied import schedule_arguments

    name = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
    kwargs = training_args.lr_scheduler_kwargs
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(
            f"--lr_scheduler_kwargs must be a JSON object of the scheduler's keyword arguments, e.g. "
            f"'{{\"num_cycles\": 0.5}}'; got {kwargs!r}"
        )
    if kwargs and name in ("constant", "constant_with_warmup"):
        raise ValueError(
            f"--lr_scheduler_kwargs {json.dumps(kwargs)} would not take effect: --lr_scheduler_type {name} takes no "
            "keyword arguments (transformers ignores them silently); remove them, or choose the scheduler they are "
            "for (e.g. --lr_scheduler_type cosine)"
        )
    steps = training_args.max_steps if training_args.max_steps > 0 else 100
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(training_args.learning_rate))
    try:
        schedule_arguments(training_args, optimizer, steps)  # the one builder of the schedule at check time
    except Exception as err:  # noqa: BLE001  # TypeError for unknown keywords, ValueError for bad values, ...
        given = f" --lr_scheduler_kwargs {json.dumps(kwargs)}" if kwargs else ""
        raise ValueError(f"--lr_scheduler_type {name}{given}: {_first_line(err)}") from None


def check_configured_objects(training_args: TrainingArguments) -> None:
    """The objects transformers builds from options only once training starts (the optimizer of ``--optim`` /
    ``--optim_args``, the schedule of ``--lr_scheduler_type`` / ``--lr_scheduler_kwargs``), built now on a dummy
    parameter, writing nothing: an error they raise is one line naming the option. The model a config describes is
    checked by :func:`check_model_config`, once the config is resolved."""
    if not training_args.do_train:
        return
    from .applied import optimizer_built_from

    optimizer_built_from(training_args)  # the one builder of the optimizer at check time (also for applied.py)
    _check_scheduler(training_args)


def check_model_config(task: Any, config: Any, config_overrides: str | None) -> None:
    """Build the model a config describes on the meta device (no memory, no weights: milliseconds) and refuse a
    config the model class rejects (heads that do not divide the width, an unknown activation, ...), naming
    ``--config_overrides`` (or the config's source) and the model class's first line."""
    from .modeling import auto_model_class

    try:
        with torch.device("meta"):
            auto_model_class(task).from_config(config)
    except Exception as err:  # noqa: BLE001  # model classes raise ValueError, KeyError, AttributeError, ...
        source = f"--config_overrides {config_overrides!r}" if config_overrides else f"the {config.model_type} config"
        raise ValueError(f"{source} describes a model that cannot be built: {_first_line(err)}") from None


# ------------------------------------------------------------------------------- checkpoints missing a piece
# Files that hold a checkpoint's model weights (one of them is needed to resume).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")  # fmt: skip


def check_checkpoint_pieces(checkpoint: str) -> None:
    """A checkpoint to resume from has every piece Trainer reads only after the data and model work: the model
    weights (a file, not a folder), and ``trainer_state.json`` holding the trainer's state (an object with its
    step). The optimizer and scheduler states and the files' integrity are checked by
    :func:`hf_tvd_loss.checkpoints.checkpoint_problem` (through ``resolve_resume_checkpoint``)."""

    def refuse(what: str) -> ValueError:
        return ValueError(f"resume_from_checkpoint {checkpoint} cannot be resumed from: {what}")

    names = set(os.listdir(checkpoint))
    for name in sorted(names & set(_WEIGHT_FILES)):
        if not os.path.isfile(os.path.join(checkpoint, name)):
            raise refuse(f"{name} is not a file (a folder or a dangling link), so its weights cannot be loaded")
    engine = any(n.startswith(("global_step", "pytorch_model_fsdp")) for n in names)  # DeepSpeed / FSDP shards
    if not (names & set(_WEIGHT_FILES)) and not engine:
        raise refuse(
            "it holds no model weights (model.safetensors is missing, and no other weight file of "
            f"{', '.join(_WEIGHT_FILES[1:])} is there)"
        )
    path = os.path.join(checkpoint, "trainer_state.json")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        raise refuse(f"trainer_state.json cannot be read ({_first_line(err)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        held = "an object without an integer global_step" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise refuse(f"trainer_state.json holds {held}, not the trainer's state (an object with its global_step)")


def check_resume_value(value: Any) -> None:
    """A ``resume_from_checkpoint`` path that exists but is a file (a weights file given for its folder)."""
    if isinstance(value, str) and os.path.exists(value) and not os.path.isdir(value):
        raise ValueError(
            f"resume_from_checkpoint {value} is a file, not a checkpoint folder: give the folder that holds it "
            f"({os.path.dirname(os.path.abspath(value))})"
        )
