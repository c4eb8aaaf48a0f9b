"""What a finished run writes for people: the model card (``README.md`` in output_dir) and the closing summary of
where the model, metrics and logs went."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from ..card import CARD_TAGS, card_path, loss_metadata, loss_name, loss_section

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

    from ..args import TVDArguments
    from .arguments import DataArguments, ModelArguments

__all__ = ["print_summary", "write_model_card"]


def _tensorboard_dir(trainer: Trainer) -> str | None:
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            return getattr(callback, "logging_dir", None)
    return None


def headline_rows(metrics: dict[str, Any], headline: Sequence[str]) -> list[tuple[str, str]]:
    """One row per split (validation, test) with the headline metrics the run produced, e.g.
    ``("validation", "loss 2.877  perplexity 17.76  bleu 12.3  ece 0.0088")``."""
    rows = []
    for prefix, split in (("eval", "validation"), ("test", "test")):
        values = [
            f"{name} {_format_metric(metrics[f'{prefix}_{name}'])}"
            for name in headline
            if f"{prefix}_{name}" in metrics
        ]
        if values:
            rows.append((split, "  ".join(values)))
    return rows


def print_summary(
    trainer: Trainer,
    task_name: str,
    training_args: TrainingArguments,
    predictions_file: str | None,
    seconds: float,
    *,
    metrics: dict[str, Any] | None = None,
    headline: Sequence[str] = (),
    defaults: str | None = None,
    resumed: tuple[str, dict[str, Any] | None] | None = None,
) -> None:
    """The headline metrics of a finished run, the training defaults it chose, and where its outputs are.
    ``resumed``: the checkpoint it resumed from and the options changed on resume (``{name: [old, new]}``)."""
    out = training_args.output_dir
    results = headline_rows(metrics or {}, headline)
    if "train_loss" in (metrics or {}):
        results.insert(0, ("train", f"loss {_format_metric(metrics['train_loss'])}"))
    settings = [("defaults", defaults)] if defaults else []
    if resumed is not None:
        settings.append(("resumed from", resumed[0] + resumed_changes_text(resumed[1])))
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
    width = max(len(name) for name, _ in rows + results + settings)
    # the precision the accelerator trained in (an accelerate config's mixed_precision applies on a CPU too)
    precision = trainer.accelerator.mixed_precision
    precision = "float32" if precision == "no" else f"{precision} mixed precision"
    print(
        f"\n[hf_tvd_loss] {task_name}: done in {seconds:.1f} s on {training_args.world_size} process(es), "
        f"{training_args.device.type}, {precision}"
    )
    for name, value in results + settings + rows:
        print(f"  {name:<{width}}  {value}")
    sys.stdout.flush()


_TOKENIZER_NAMES = {"bpe": "BPE", "sentencepiece": "SentencePiece"}


def resumed_changes_text(changes: dict[str, Any] | None) -> str:
    """``"; changed on resume: max_steps 2 -> 4"`` for the options a resumed run changed, or ``""``."""
    if not changes:
        return ""
    return "; changed on resume: " + ", ".join(
        f"{name} {_show(old)} -> {_show(new)}" for name, (old, new) in changes.items()
    )


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _format_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _examples_line(examples: dict[str, Any]) -> str:
    """How raw rows became examples (:meth:`~.base.Task.describe_examples`), as one line of the card."""
    if "prompt_template" in examples:  # prompt → target on a decoder-only model
        return (
            f"- Examples: {examples['kind']}; {examples['format']}; prompt template {examples['prompt_template']!r}; "
            f"source cut to {examples['max_source_length']} tokens, targets up to {examples['max_target_length']}"
        )
    details = "; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in examples.items() if key != "kind")
    return f"- Examples: {examples['kind']}" + (f"; {details}" if details else "")


def write_model_card(
    metrics: dict[str, Any],
    *,
    task_name: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    tvd_args: TVDArguments,
    training_args: TrainingArguments,
    argv: Sequence[str],
    tokenizer_trained: str | bool | None,
    examples: dict[str, Any] | None = None,
    resumed: tuple[str, dict[str, Any] | None] | None = None,
) -> str:
    """``README.md`` in output_dir: the loss and its γ, b, ε, the model, data, training settings and metrics.

    ``tokenizer_trained``: the ``tokenizer_type`` trained on the data ("bpe", "sentencepiece"; True means BPE), or
    None/False for a pretrained tokenizer.
    """
    tvd, args, data = tvd_args, training_args, data_args
    if model_args.model_name_or_path:
        model_line = f"fine-tuned from `{model_args.model_name_or_path}`"
        if model_args.freeze_layers:
            model_line += f" (input embeddings and the first {model_args.freeze_layers} blocks frozen)"
    else:
        source = (
            f"config `{model_args.config_name}`" if model_args.config_name else f"model type `{model_args.model_type}`"
        )
        overrides = f" with `{model_args.config_overrides}`" if model_args.config_overrides else ""
        model_line = f"trained from scratch: {source}{overrides}"
    if data.dataset_name:
        data_line = f"Hub dataset `{data.dataset_name}`" + (
            f" ({data.dataset_config_name})" if data.dataset_config_name else ""
        )
    elif data.data_source() == "files":
        data_line = ", ".join(f"{name}: `{os.path.basename(path)}`" for name, path in
                              (("train", data.train_file), ("validation", data.validation_file),
                               ("test", data.test_file)) if path)  # fmt: skip
    else:
        data_line = f"synthetic {task_name} corpus generated by `hf_tvd_loss.tasks.synthetic` (seed {args.seed})"
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [{', '.join([*CARD_TAGS, task_name])}]",
        *yaml.safe_dump({"hf_tvd_loss": loss_metadata(tvd)}, sort_keys=False, allow_unicode=True).splitlines(),
        "---",
        "",
        f"# {task_name} model trained with {loss_name(tvd)}",
        "",
        *loss_section(tvd),
        "## Model and data",
        "",
        f"- Model: {model_line}"
        + (
            f"; tokenizer: {_TOKENIZER_NAMES.get(tokenizer_trained, 'BPE')} trained on the training data"
            if tokenizer_trained
            else ""
        ),  # fmt: skip
        f"- Data: {data_line}",
        *([_examples_line(examples)] if examples else []),
        f"- Training: {args.num_train_epochs:g} epoch(s)"
        + (f", max_steps {args.max_steps}" if args.max_steps and args.max_steps > 0 else "")
        + f", learning rate {args.learning_rate:g} ({scheduler}), {args.per_device_train_batch_size} "
        f"per device × {args.gradient_accumulation_steps} accumulation × {args.world_size} process(es), seed "
        f"{args.seed}",
        *([f"- Resumed from `{os.path.basename(resumed[0])}`{resumed_changes_text(resumed[1])}"] if resumed else []),
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
        " ".join([os.path.basename(sys.argv[0]) or "script", *argv]),
        "```",
        "",
    ]
    path = card_path(args.output_dir)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
