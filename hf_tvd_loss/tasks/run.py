"""The run every task script makes (:func:`run_task`), in three phases.

:func:`prepare` parses the options (YAML + command line), checks them, loads the data and checks its columns, loads
the pretrained model or resolves the config of a model built from scratch; it writes nothing, so bad input ends the
run before anything exists on disk. :func:`build` claims ``output_dir`` (one run at a time, with a ledger of
what the run writes there: :mod:`.outputs`), trains a tokenizer when there is no pretrained one, builds the model,
tokenises the data and constructs the trainer (a problem found there, such as texts too short for one block,
removes what the run wrote). :func:`train_and_evaluate` trains, evaluates,
predicts and writes the model, metrics, predictions, ``run_info.json`` and a model card.

The pieces come from ``checks.py``, ``data.py``, ``modeling.py``, ``trainers.py`` and ``report.py``; the task
(:class:`~hf_tvd_loss.tasks.base.Task`) supplies what differs between tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from datasets import Dataset, DatasetDict

from ..args import TVDArguments
from ..checkpoints import (
    check_resume_loss_settings,
    check_resume_training_options,
    read_checkpoint_marker,
    write_json_atomically,
)
from ..trainer import check_training_args_for_loss
from .applied import check_options_applied
from .arguments import DataArguments, ModelArguments
from .base import ChosenDefaults, Task
from .checks import (
    check_common_args,
    check_configured_objects,
    check_launcher_environment,
    check_model_config,
    check_model_sources,
    check_options_take_effect,
    check_unapplied_options,
    has_accelerator,
    is_inside,
)
from .data import load_raw_splits
from .modeling import (
    auto_model_class,
    build_model_from_config,
    freeze_layers,
    max_positions,
    resolve_config,
    train_tokenizer,
)
from .outputs import OutputFolder, ledger_callback
from .report import print_summary, write_model_card
from .trainers import TaskGenerationTrainer, TaskSeq2SeqTrainer, TaskTrainer

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

__all__ = ["Built", "Prepared", "build", "prepare", "run_task", "train_and_evaluate"]

logger = logging.getLogger("hf_tvd_loss.tasks")


@dataclass
class Prepared:
    """Everything :func:`prepare` checked and loaded; nothing has been written yet."""

    task: Task[Any, Any]
    model_args: ModelArguments  # as parsed, with the config_overrides actually applied
    data_args: DataArguments
    tvd_args: TVDArguments
    training_args: TrainingArguments
    raw: DatasetDict
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase | None  # None: trained on the training data in build
    model: PreTrainedModel | None  # None: built from config in build
    argv: list[str]
    dropped_rows: dict[str, Any] = dataclasses.field(default_factory=dict)  # split -> rows dropped and why
    defaults: ChosenDefaults = dataclasses.field(default_factory=ChosenDefaults)  # from scratch or fine-tuning


# Config fields that set parameter shapes (vocab_size aside: a tokenizer trained on the data sets it later).
_ARCHITECTURE_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "head_dim", "n_embd", "n_layer", "n_head", "n_inner", "d_model", "d_ff", "d_kv",
    "num_layers", "num_decoder_layers", "num_heads", "encoder_layers", "decoder_layers", "encoder_ffn_dim",
    "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads", "tie_word_embeddings",
)  # fmt: skip


def _check_checkpoint_architecture(checkpoint: str, config: Any) -> None:
    """A checkpoint saved from a model of other sizes than the one this run builds is refused now, naming the
    differences, instead of failing to load its weights after the data and tokenizer work."""
    import json

    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        return  # weights-only checkpoints (engine shards): the Trainer's own load will say
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    ours = config.to_dict()
    differ = [f"{k} {saved[k]!r} (checkpoint) vs {ours[k]!r} (this run)" for k in _ARCHITECTURE_FIELDS
              if k in saved and k in ours and saved[k] != ours[k]]  # fmt: skip
    if differ:
        raise ValueError(
            f"resume_from_checkpoint {checkpoint} was saved from another model: {'; '.join(differ)}. Give the "
            "same model options (model_type, config_name, config_overrides, model_name_or_path) as the run that "
            "saved it"
        )


def _cpu_processes_on_cpu() -> None:
    """Several processes launched on a machine without an accelerator run as one CPU process group (gloo).

    transformers would otherwise let each process train alone, silently (world size 1 each): the launcher's
    ``use_cpu: true`` (``configs/accelerate/cpu_2proc.yaml``) does not reach the Trainer, nor does anything else
    in the environment accelerate sets. With no GPU the CPU is the only way to run the processes asked for, so this is
    what was asked, not a fallback; it is said in the log and recorded (``run_info.json``: world size, device).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "ACCELERATE_USE_CPU" in os.environ:
        return
    if not has_accelerator():
        os.environ["ACCELERATE_USE_CPU"] = "true"
        logger.info("%s processes and no GPU: training on the CPU, one process group (gloo)", os.environ["WORLD_SIZE"])


def prepare(task: Task[Any, Any], argv: Sequence[str] | None = None) -> Prepared:
    """Parse and check everything, load data and (pretrained) model. Raises ``ValueError`` naming the problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_launcher_environment()  # before the Trainer's arguments read them (a rendezvous error, or a hang)
    _cpu_processes_on_cpu()
    (model_args, data_args, tvd_args, training_args), defaults = task.parse_args(argv)
    check_common_args(data_args, model_args, training_args)  # resolves resume_from_checkpoint to a folder
    check_options_take_effect(data_args, training_args)
    check_unapplied_options(data_args, model_args, training_args, defaults.given)
    check_configured_objects(training_args)  # the optimizer and LR schedule built now, on a dummy parameter
    check_options_applied(training_args, defaults.given)  # optimizer and schedule built on a throwaway parameter
    check_model_sources(model_args)  # after the options' combinations: a contradiction is named first
    task.check_args(data_args, model_args, training_args)
    task.check_loss(tvd_args)
    check_training_args_for_loss(training_args, tvd_args)  # liger-kernel patches, label_names, kernel device
    task.check_metric_for_best_model(data_args, training_args)
    if training_args.resume_from_checkpoint:  # refused here too, before data and model are loaded
        resume = training_args.resume_from_checkpoint
        check_resume_loss_settings(resume, read_checkpoint_marker(resume), tvd_args)
        check_resume_training_options(resume, read_checkpoint_marker(resume), training_args)

    dropped: dict[str, Any] = {}
    raw = load_raw_splits(task, data_args, training_args, model_args.cache_dir, dropped)
    config, config_overrides, task = resolve_config(task, model_args)  # the task set up for this kind of model
    task.check_model_kind(data_args)
    task.configure_config(config, raw, data_args)
    if not model_args.model_name_or_path:
        check_model_config(task, config, config_overrides)  # the model built on the meta device
    if training_args.resume_from_checkpoint:
        _check_checkpoint_architecture(training_args.resume_from_checkpoint, config)
    model_args = dataclasses.replace(model_args, config_overrides=config_overrides)
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
    elif training_args.resume_from_checkpoint:
        tokenizer = _checkpoint_tokenizer(training_args.resume_from_checkpoint)
    if model_args.model_name_or_path:
        from transformers import set_seed

        # A head the checkpoint lacks (a classifier's score layer) is initialised while loading: seeded by --seed, so
        # that a run does not depend on what the process drew before it (a study's earlier runs, another order).
        set_seed(training_args.seed)
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
    if training_args.world_size > 1:
        # Every process has checked output_dir before the main process creates anything in it (build).
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    return Prepared(
        task, model_args, data_args, tvd_args, training_args, raw, config, tokenizer, model, argv, dropped, defaults
    )


def _checkpoint_tokenizer(checkpoint: str) -> PreTrainedTokenizerBase:
    """The tokenizer a resumed run must use: the one saved with its checkpoint. A tokenizer trained again on the
    data would give other token ids under the checkpoint's weights (measured: 60 of 64 ids moved when the training
    data had changed), so a checkpoint without one is refused."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"resume_from_checkpoint {checkpoint} holds no loadable tokenizer ({str(err).splitlines()[0]}); this run "
            "would train a new one whose token ids need not match the checkpoint's weights: pass --tokenizer_name "
            "with the tokenizer the checkpoint was trained with"
        ) from None


def _texts_for_tokenizer(task: Task[Any, Any], prepared: Prepared) -> Iterator[str]:
    yield from task.texts(prepared.raw["train"] if "train" in prepared.raw else next(iter(prepared.raw.values())),
                          prepared.data_args)  # fmt: skip


@dataclass
class Built:
    """The trainer and what it was built from; ``output_folder`` is the claimed folder (main process; else None)."""

    trainer: TaskTrainer | TaskSeq2SeqTrainer
    tokenizer: PreTrainedTokenizerBase
    datasets: dict[str, Dataset]
    output_folder: OutputFolder | None
    start: float
    generates: bool  # evaluation and prediction by generation (text metrics, a predictions file)

    @property
    def created_output_dir(self) -> bool:
        return self.output_folder is not None and self.output_folder.created


def build(prepared: Prepared) -> Built:
    """Claim output_dir, train a tokenizer if needed, build the model, preprocess, construct the trainer.

    The main process claims the folder (:meth:`.outputs.OutputFolder.claim`: one run at a time; with
    ``--overwrite_output_dir`` exactly the earlier run's recorded files are removed). A ``ValueError`` here (e.g.
    texts too short for one block) removes what this run wrote, so a refused run leaves nothing behind.
    """
    training_args = prepared.training_args
    start = time.time()
    folder = None
    if training_args.process_index == 0:
        _step("create and lock the output folder", training_args.output_dir)
        resume = training_args.resume_from_checkpoint
        folder = OutputFolder.claim(
            training_args.output_dir,
            overwrite=prepared.data_args.overwrite_output_dir,
            resume=bool(resume) and is_inside(resume, training_args.output_dir),
        )
    try:
        return _build(prepared, folder, start)
    except BaseException:
        if folder is not None:
            try:
                folder.discard()
            except OSError as err:  # the folder vanished, or cannot be written: the report says so
                _STEP[2] = f"this run's files could not all be removed ({_os_reason(err)})"
        raise


def _build(prepared: Prepared, folder: OutputFolder | None, start: float) -> Built:
    from transformers import set_seed

    task, data_args, training_args = prepared.task, prepared.data_args, prepared.training_args
    model_args = prepared.model_args
    output_dir = training_args.output_dir
    set_seed(training_args.seed)
    is_main = training_args.process_index == 0

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
                    kind=model_args.tokenizer_type,
                )
                if folder is not None:
                    folder.expect(["tokenizer"])
                _step("write the trained tokenizer to", tokenizer_dir)
                tokenizer.save_pretrained(tokenizer_dir)
                if folder is not None:
                    folder.update(close=["tokenizer"])
            else:
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        logger.info("trained a %s tokenizer with %d tokens on the training data", model_args.tokenizer_type,
                    len(tokenizer))  # fmt: skip

    _step("build the model and tokenise the data for", output_dir)
    model = prepared.model
    if model is None:
        model = build_model_from_config(task, prepared.config, tokenizer)
    elif len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    task.configure_model(model, tokenizer, data_args, training_args)
    frozen = freeze_layers(model, model_args)  # --freeze_layers (and its cache of the frozen blocks' outputs)
    if frozen is not None:
        logger.info("froze the embeddings and %d of %d blocks: %d of %d parameters train", frozen["freeze_layers"],
                    frozen["blocks"], frozen["trainable_parameters"], frozen["parameters"])  # fmt: skip

    datasets: dict[str, Dataset] = {}
    for split, raw in prepared.raw.items():
        with training_args.main_process_first(desc=f"preprocessing {split}"):
            datasets[split] = task.preprocess(
                raw, tokenizer, data_args, training_args, split, dropped=prepared.dropped_rows
            )
        if len(datasets[split]) == 0:
            raise ValueError(f"the {split} split has no usable examples after preprocessing")
    batch = training_args.per_device_train_batch_size * training_args.world_size
    if training_args.do_train and training_args.dataloader_drop_last and len(datasets.get("train", [])) < batch:
        raise ValueError(
            f"--dataloader_drop_last with {len(datasets['train'])} training examples and a batch of {batch} "
            f"(per_device_train_batch_size × {training_args.world_size} processes) leaves no batch to train on: "
            "lower per_device_train_batch_size or remove --dataloader_drop_last"
        )

    trainer_cls = TaskSeq2SeqTrainer if task.is_seq2seq else TaskTrainer
    generation = task.prompt_generation(data_args, training_args)
    generates = task.evaluates_by_generation(data_args, training_args)
    if getattr(task, "decoder_only", False) or generation is not None:
        trainer_cls = TaskGenerationTrainer  # prompt → target pairs on a decoder-only model, judged by generation
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=datasets.get("train"),
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=task.data_collator(tokenizer, model),
        # Text metrics need generated ids: without generation the evaluation is teacher-forced (loss, NLL,
        # calibration), and the Trainer then keeps no logits (prediction_loss_only). A classifier's metrics read its
        # logits (a few classes per example).
        compute_metrics=task.compute_metrics(tokenizer, data_args) if generates or task.scores_predictions else None,
        tvd_args=prepared.tvd_args,
    )
    if isinstance(trainer, TaskGenerationTrainer):
        trainer.prompt_generation = generation
    if folder is not None:
        trainer.add_callback(ledger_callback(folder))
    return Built(trainer, tokenizer, datasets, folder, start, generates)


def train_and_evaluate(prepared: Prepared, built: Built | None = None) -> dict[str, Any]:
    """Train, evaluate, predict and save; returns the metrics (also written to ``all_results.json``)."""
    built = built if built is not None else build(prepared)
    task, training_args = prepared.task, prepared.training_args
    trainer, tokenizer, datasets, start = built.trainer, built.tokenizer, built.datasets, built.start
    output_dir = training_args.output_dir

    folder = built.output_folder
    _step("record the run's outputs in", output_dir)
    if folder is not None:
        folder.drop_replaced()  # built: the earlier run's files set aside by --overwrite_output_dir go now
        folder.expect_run_outputs()  # the model, metrics, card and runs/ it is about to write
    metrics: dict[str, Any] = {}
    if training_args.do_train:
        _step("train and save checkpoints in", output_dir)
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        _step("save the model and the metrics in", output_dir)
        trainer.save_model()
        trainer.save_state()
        train_metrics = dict(result.metrics, train_samples=len(datasets["train"]))
        trainer.save_metrics("train", train_metrics)
        metrics.update(train_metrics)
    _step("evaluate, predict and write the results in", output_dir)
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
        if trainer.is_world_process_zero() and (built.generates or task.scores_predictions):
            predictions_file = task.write_predictions(output, tokenizer, output_dir)
    if not training_args.do_train:
        trainer.save_model()  # evaluation-only runs still leave a complete model folder (a collective call)

    _step("write the metrics, model card and run_info.json in", output_dir)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics, combined=False)
        examples = task.describe_examples(prepared.data_args, tokenizer)
        resumed = None
        if training_args.do_train and training_args.resume_from_checkpoint:
            resumed = (training_args.resume_from_checkpoint, getattr(trainer, "tvd_resumed_with_changes", None))
        info = {
            "task": task.name,
            "world_size": training_args.world_size,
            "device": str(training_args.device),
            # "no", "bf16" or "fp16": what the accelerator trained in (from --bf16/--fp16 or an accelerate config)
            "mixed_precision": str(trainer.accelerator.mixed_precision),
            "seconds": round(time.time() - start, 1),
            "argv": prepared.argv,
            "data": prepared.data_args.data_source(),
            "tvd_args": asdict(prepared.tvd_args),
            "resumed_from": training_args.resume_from_checkpoint if training_args.do_train else None,
            # {option: [checkpoint's, this run's]} applied from the resumed step on; what was verified of its files
            "resumed_with_changes": getattr(trainer, "tvd_resumed_with_changes", None),
            "resumed_checkpoint_verified": getattr(trainer, "tvd_resume_verified", None),
            "dropped_rows": prepared.dropped_rows,
            "examples": examples,
            "defaults": prepared.defaults.describe(),
            "freeze_layers": prepared.model_args.freeze_layers,
            "cache_frozen_outputs": prepared.model_args.cache_frozen_outputs,
        }
        write_model_card(
            metrics,
            task_name=task.name,
            model_args=prepared.model_args,
            data_args=prepared.data_args,
            tvd_args=prepared.tvd_args,
            training_args=training_args,
            argv=prepared.argv,
            tokenizer_trained=prepared.model_args.tokenizer_type if prepared.tokenizer is None else None,
            examples=examples,
            resumed=resumed,
        )
        # Written last, atomically: a folder without run_info.json holds a run that did not finish.
        write_json_atomically(os.path.join(output_dir, "run_info.json"), info, indent=2)
        if folder is not None:
            folder.finish()
            folder.release()
        print_summary(
            trainer, task.name, training_args, predictions_file, time.time() - start,
            metrics=metrics, headline=task.headline_metrics, defaults=prepared.defaults.describe(),
            resumed=resumed,
        )  # fmt: skip
    return metrics


def run_task(task: Task[Any, Any], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of the scripts: bad input exits with status 2 and one ``error:`` line before anything is written."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hf_tvd_loss").setLevel(logging.INFO)
    from ..callbacks import NonFiniteLossError

    _step("read the options, data and model", "")
    prepared = None
    try:
        prepared = prepare(task, argv)
        built = build(prepared)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        kept = ("the output folder as it was before this run (what this run wrote was removed)" if prepared is not None
                else "nothing was written")  # fmt: skip
        _exit_on_os_failure(err, _STEP[2] or kept)
        raise
    try:
        return train_and_evaluate(prepared, built)
    except NonFiniteLossError as err:  # a run that went wrong, not bad input: status 1, one line
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as err:
        _exit_on_os_failure(err, _kept_in(prepared.training_args.output_dir))
        raise


# What the run is doing ([operation, path]) and what a refused run could not put back: for the one-line report of an
# operating-system failure (run_task).
_STEP = ["", "", ""]


def _step(operation: str, path: str) -> None:
    _STEP[:] = [operation, path, ""]


_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how the Rust libraries (tokenizers, safetensors) report one


def _os_reason(err: BaseException) -> str | None:
    """The operating system's reason for ``err`` (``File too large``), or None when it is no file-system error."""
    if isinstance(err, OSError) and (err.errno is not None or err.strerror):
        return err.strerror or os.strerror(err.errno or 0)
    found = _OS_ERROR.search(str(err))
    return os.strerror(int(found.group(1))) if found else None


def _kept_in(output_dir: str) -> str:
    """What an interrupted run leaves in ``output_dir``, for the report."""
    from ..checkpoints import last_complete_checkpoint

    if not os.path.isdir(output_dir):
        return f"nothing: {output_dir} no longer exists"
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        return "no complete checkpoint (the files written so far are listed in run_outputs.json)"
    return f"the complete checkpoint {checkpoint} (continue with --resume_from_checkpoint latest)"


def _exit_on_os_failure(err: BaseException, kept: str) -> None:
    """A file-system failure as one line (the operation, the path, the reason, what was kept), exit status 1."""
    reason = _os_reason(err)
    if reason is None:
        return
    operation, path = _STEP[0] or "run", _STEP[1]
    if isinstance(err, OSError) and err.filename:
        path = os.fsdecode(err.filename)
    print(f"error: could not {operation}{f' {path}' if path else ''}: {reason}; kept: {kept}", file=sys.stderr)
    raise SystemExit(1) from None
