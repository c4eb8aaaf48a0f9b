"""The :class:`Task` interface: what one task (summarization, translation, language modelling) supplies to the
shared run in ``run.py`` — its data dataclass, default options, synthetic corpus, column checks, preprocessing,
collator, metrics and predictions file.

A task is generic in its data-arguments dataclass and its training-arguments class, so that each hook sees the
options it reads (``Task[LanguageModelingDataArguments, TrainingArguments]``, ``Seq2SeqTask[...]`` with
``Seq2SeqTrainingArguments``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from ..args import TVDArguments
from .arguments import DataArguments, ModelArguments
from .cli import YamlArgumentParser

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import (
        DataCollator,
        EvalPrediction,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        TrainingArguments,
    )
    from transformers.trainer_utils import PredictionOutput

__all__ = ["ChosenDefaults", "DataArgsT", "MetricsFunction", "Task", "TrainingArgsT"]

DataArgsT = TypeVar("DataArgsT", bound=DataArguments)
TrainingArgsT = TypeVar("TrainingArgsT", bound="TrainingArguments")
MetricsFunction = Callable[["EvalPrediction"], dict[str, float]]

FROM_SCRATCH, FINE_TUNING = "building a model from scratch", "fine-tuning a pretrained model"


@dataclass(frozen=True)
class ChosenDefaults:
    """Which set of training defaults a run got, and which of them it kept.

    ``situation`` is :data:`FINE_TUNING` when ``--model_name_or_path`` is set, else :data:`FROM_SCRATCH`.
    ``applied`` maps each fine-tuning default the run uses to its value; ``overridden`` maps each one the user
    set (command line or YAML) to the user's value. ``given`` names every option the user set, whatever its
    value (what :func:`~hf_tvd_loss.tasks.checks.check_unapplied_options` reads).
    """

    situation: str = FROM_SCRATCH
    applied: dict[str, Any] = dataclass_field(default_factory=dict)
    overridden: dict[str, Any] = dataclass_field(default_factory=dict)
    given: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.situation == FROM_SCRATCH:
            return f"{self.situation}: the task's defaults (see --help)"
        kept = ", ".join(f"{k} {_show(v)}" for k, v in self.applied.items()) or "none"
        text = f"{self.situation}: {kept}"
        if self.overridden:
            text += " (given instead: " + ", ".join(f"{k} {_show(v)}" for k, v in self.overridden.items()) + ")"
        return text


def _show(value: Any) -> str:
    return str(getattr(value, "value", value))


class Task(Generic[DataArgsT, TrainingArgsT]):
    """One task's pieces. Subclasses set the class attributes and implement the hooks."""

    name: str = ""
    description: str = ""
    data_args_class: type[DataArgsT]
    training_args_class: type[TrainingArgsT]
    auto_model_class: str = ""  # e.g. "AutoModelForSeq2SeqLM"
    head_description: str = ""  # for the error when a model lacks the needed head
    is_seq2seq: bool = False
    defaults: dict[str, Any] = {}  # parser defaults: model, data, TVD and training options
    # Sizes of the default model_type when built from scratch without --config_overrides (a tiny model).
    scratch_config_overrides: str | None = None
    # Training defaults that replace some of ``defaults`` when --model_name_or_path is set (fine-tuning); an explicit
    # value (command line or --config) always wins.
    finetune_defaults: dict[str, Any] = {}
    # Metric names (without the eval_/test_ prefix) the closing summary prints, when present.
    headline_metrics: tuple[str, ...] = ("loss", "perplexity", "token_accuracy", "ece")
    # Whether evaluation scores the model's predictions (compute_metrics on the logits) and --do_predict writes them,
    # without generating: a classifier's are its logits over a few classes.
    scores_predictions: bool = False

    # --- hooks
    def for_config(self, config: Any, origin: str = "") -> Task[DataArgsT, TrainingArgsT]:
        """The task for a model with ``config`` (a task may serve several kinds of model; see ``Seq2SeqTask``), or a
        ``ValueError`` when the model lacks the head the task needs."""
        import transformers

        auto = getattr(transformers, self.auto_model_class)
        if type(config) not in auto._model_mapping:
            raise ValueError(
                f"a {config.model_type!r} model{origin} has no {self.head_description}: the {self.name} task needs a model "
                f"that {auto.__name__} can load"
            )
        return self

    def configure_config(self, config: Any, raw: Mapping[str, Dataset], data_args: DataArgsT) -> None:
        """Settings the data decides on the model's config before the model is built or loaded (a classifier's
        classes); refuse data that cannot fit (raise ``ValueError``). Writes nothing."""

    def check_model_kind(self, data_args: DataArgsT) -> None:
        """Refuse the options the kind of model :meth:`for_config` chose would not apply (raise ``ValueError``)."""

    def scratch_overrides(self, model_type: str) -> str | None:
        """``config_overrides`` of a model of ``model_type`` built from scratch without any: the task's tiny sizes
        for its default model type, else None (the model keeps its own sizes)."""
        return self.scratch_config_overrides if model_type == self.defaults.get("model_type") else None

    def synthetic_rows(self, split: str, num_examples: int, seed: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def check_args(self, data_args: DataArgsT, model_args: ModelArguments, training_args: TrainingArgsT) -> None:
        """Task-specific option checks (raise ``ValueError`` naming the option)."""

    def check_loss(self, tvd_args: TVDArguments) -> None:
        """Loss options this task's models cannot use (raise ``ValueError`` naming the option); the trainer would
        refuse them too, but only once the model is built."""

    def check_columns(self, dataset: Dataset, split: str, origin: str, data_args: DataArgsT) -> None:
        raise NotImplementedError

    def drops_text(self, option: str, value: str) -> bool:
        """Whether preprocessing drops a row whose text field ``option`` holds ``value``, like a null one (counted up
        front by :func:`~.data.check_rows`): by default an empty or blank text (pairs); a task overrides it where
        empty texts are normal (language modelling: blank lines add nothing)."""
        return not value.strip()

    def message_fields(
        self, data_args: DataArgsT, columns: list[str], features: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, bool]]:
        """The chat columns every row needs: ``(column, option, needs an assistant turn)``. Rows where one is null,
        empty (or has no assistant turn when needed) are dropped by preprocessing and counted like text fields."""
        return []

    def text_fields(
        self, data_args: DataArgsT, columns: list[str], features: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str | None, str]]:
        """The texts every row of a split with ``columns`` needs: ``(column, key in a dict column or None, option)``.

        ``features``: the split's ``datasets`` features by column, where the kind of a column decides the format.

        Rows where one is null or absent (or empty, see :meth:`drops_text`) are dropped by preprocessing;
        ``data.check_rows`` counts them before anything is written and refuses too many.
        """
        return []

    def texts(self, dataset: Dataset, data_args: DataArgsT) -> Iterator[str]:
        """All text of a split, for training a tokenizer."""
        raise NotImplementedError

    def preprocess(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: DataArgsT,
        training_args: TrainingArgsT,
        split: str,
        *,
        dropped: dict[str, Any] | None = None,
    ) -> Dataset:
        """Tokenise one split. Examples dropped while tokenising are counted into ``dropped[split]`` (the report
        :func:`~hf_tvd_loss.tasks.data.check_rows` started: ``dropped``, ``rows``, ``reasons``) when given."""
        raise NotImplementedError

    def max_length_needed(self, data_args: DataArgsT) -> int:
        """Longest sequence the model must accept (checked against a from-scratch config's positions)."""
        raise NotImplementedError

    def tokenizer_max_length(self, data_args: DataArgsT) -> int | None:
        """``model_max_length`` of a trained tokenizer (None: unlimited, e.g. texts that are cut into blocks)."""
        return self.max_length_needed(data_args)

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> DataCollator | None:
        return None

    def compute_metrics(self, tokenizer: PreTrainedTokenizerBase, data_args: DataArgsT) -> MetricsFunction | None:
        return None

    def configure_model(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data_args: DataArgsT,
        training_args: TrainingArgsT,
    ) -> None:
        """Last settings on the model (e.g. generation), after it is built or loaded."""

    # what every evaluation of the scripts reports (without the eval_ prefix): the Trainer's own, the loss's sums
    evaluation_metric_names: tuple[str, ...] = (
        "loss", "nll", "perplexity", "tvd_weight_mean", "tvd_weight_floor_fraction", "gamma", "token_accuracy",
        "entropy", "ece", "confidence", "runtime", "samples_per_second", "steps_per_second",
    )  # fmt: skip
    generated_metric_names: tuple[str, ...] = ()  # added when the evaluation generates

    def evaluates_by_generation(self, data_args: DataArgsT, training_args: TrainingArgsT) -> bool:
        return False

    def check_metric_for_best_model(self, data_args: DataArgsT, training_args: TrainingArgsT) -> None:
        """Refuse a ``--metric_for_best_model`` the evaluation will not report (transformers fails with a KeyError
        only after the first evaluation)."""
        name = training_args.metric_for_best_model
        if not name:
            return
        names = set(self.evaluation_metric_names)
        if self.evaluates_by_generation(data_args, training_args):
            names |= {*self.generated_metric_names, "gen_len", "generation_seconds_per_example"}
        if name.removeprefix("eval_") not in names:
            raise ValueError(
                f"--metric_for_best_model {name!r} is not a metric this {self.name} evaluation reports; it reports "
                f"{', '.join(sorted(names))} (with or without the eval_ prefix)"
            )

    def describe_examples(self, data_args: DataArgsT, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
        """How raw rows became training examples, for the model card and ``run_info.json`` (None: nothing to add)."""
        return None

    def prompt_generation(self, data_args: DataArgsT, training_args: TrainingArgsT) -> dict[str, Any] | None:
        """Settings of evaluation by generation from the prompts (``max_new_tokens``, ``num_beams``), or None: the
        trainer's :attr:`~.generation.PromptGenerationMixin.prompt_generation`."""
        return None

    def write_predictions(
        self, output: PredictionOutput, tokenizer: PreTrainedTokenizerBase, output_dir: str
    ) -> str | None:
        return None

    # --- shared
    def build_parser(self, fine_tuning: bool = False) -> YamlArgumentParser:
        """The parser with the task's defaults; ``fine_tuning``: with :attr:`finetune_defaults` on top."""
        parser = YamlArgumentParser(
            (ModelArguments, self.data_args_class, TVDArguments, self.training_args_class),
            description=self.description,
            epilog=self._defaults_epilog(),
        )
        defaults = dict(self.defaults)
        defaults.setdefault("report_to", ["tensorboard"] if _tensorboard_available() else ["none"])
        # Every parameter gets a gradient in these models; the search for unused ones costs a graph traversal.
        defaults.setdefault("ddp_find_unused_parameters", False)
        defaults.setdefault("dataloader_pin_memory", torch.cuda.is_available())  # pinning needs an accelerator
        if fine_tuning:
            defaults.update(self.finetune_defaults)
        parser.set_defaults(**defaults)
        for action in parser._actions:
            if action.dest in self.finetune_defaults and action.help:
                action.help += (
                    f" [Default when building a model from scratch: {_show(self._scratch_default(action.dest))}; with "
                    f"--model_name_or_path (fine-tuning): {_show(self.finetune_defaults[action.dest])}.]"
                )
        return parser

    def _scratch_default(self, name: str) -> Any:
        """The from-scratch default of option ``name``: the task's, else the argument dataclass field's."""
        if name in self.defaults:
            return self.defaults[name]
        for cls in (ModelArguments, self.data_args_class, TVDArguments, self.training_args_class):
            for f in dataclasses.fields(cls):
                if f.name == name:
                    return f.default
        return None

    def _defaults_epilog(self) -> str | None:
        if not self.finetune_defaults:
            return None
        scratch = ", ".join(f"{k} {_show(self._scratch_default(k))}" for k in self.finetune_defaults)
        tuned = ", ".join(f"{k} {_show(v)}" for k, v in self.finetune_defaults.items())
        return (
            f"Training defaults depend on the situation. Building a model from scratch (no --model_name_or_path): "
            f"{scratch}. Fine-tuning a pretrained model (--model_name_or_path): {tuned}. A value given on the "
            "command line or in --config always wins. The run's closing summary says which were used."
        )

    def parse_args(self, argv: Sequence[str]) -> tuple[tuple[Any, ...], ChosenDefaults]:
        """Parse ``argv`` (with ``--config``): the four argument dataclasses and the defaults that were chosen.

        Fine-tuning defaults come in under the YAML file and the command line: the options are parsed once to
        learn whether ``--model_name_or_path`` is set (from either), then again with those defaults.
        """
        parser = self.build_parser()
        parsed = parser.parse_args_and_config(argv)
        if not parsed[0].model_name_or_path or not self.finetune_defaults:
            return parsed, ChosenDefaults(given=parser.given_options)
        parsed = self.build_parser(fine_tuning=True).parse_args_and_config(argv)
        values = {
            name: getattr(args, name) for args in parsed for name in self.finetune_defaults if hasattr(args, name)
        }
        applied = {k: v for k, v in self.finetune_defaults.items() if _show(values.get(k)) == _show(v)}
        overridden = {k: values.get(k) for k in self.finetune_defaults if k not in applied}
        return parsed, ChosenDefaults(FINE_TUNING, applied, overridden, parser.given_options)


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))
