"""The part of summarization and translation that is the same: source → target pairs, generation, text metrics on
the generated outputs, predictions written to a file.

Two kinds of model: an encoder-decoder (``AutoModelForSeq2SeqLM``: the source is the encoder's input, the target the
decoder's labels, ``Seq2SeqTrainer`` generates), or a decoder-only LLM (``AutoModelForCausalLM``: each pair becomes
one prompt → target sequence, :mod:`.prompting`, the same mechanism as the language-modelling script's instruction
data; evaluation generates from the prompt, :mod:`.generation`). Which one follows from the model's config:
:meth:`Seq2SeqTask.for_config` returns the task set up for it.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from datasets import Dataset
from transformers import Seq2SeqTrainingArguments

from .arguments import DataArguments, ModelArguments
from .base import MetricsFunction, Task
from .generation import configure_prompt_generation, generation_metrics, write_generated_predictions
from .metrics import check_metric_package
from .prompting import (
    IGNORE_INDEX,
    Encoded,
    PaddingCollator,
    PromptFormat,
    encode_prompt_completion,
    tokenize_examples,
    truncate_text,
    uses_chat_template,
)

if TYPE_CHECKING:
    from transformers import DataCollator, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.trainer_utils import PredictionOutput

__all__ = ["Seq2SeqDataArguments", "Seq2SeqTask"]


@dataclass
class Seq2SeqDataArguments(DataArguments):
    """Lengths and generation settings shared by summarization and translation."""

    max_source_length: int = field(default=512, metadata={"help": "Source tokens kept (longer inputs are truncated)."})
    max_target_length: int = field(
        default=128,
        metadata={"help": "Target tokens kept in training, and the generation length unless generation_max_length."},
    )
    source_prefix: str = field(
        default="", metadata={"help": "Text put before every source (e.g. 'summarize: ' for T5)."}
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "Generation: n-grams of this size cannot repeat (0 = off; the paper uses 3)."}
    )
    length_penalty: float = field(
        default=1.0, metadata={"help": "Generation: beam-search length penalty (exponent of the length)."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Decoder-only models: the prompt a source becomes, with the placeholder {source} (translation "
                  "also {source_lang}, {target_lang}: the languages' names); the target follows it. Default: the "
                  "task's (see --help's epilog). Refused for an encoder-decoder, which reads the source as it is."},
    )  # fmt: skip
    prompt_completion_format: PromptFormat = field(
        default="auto",
        metadata={"help": "Decoder-only models: how a prompt → target pair becomes one sequence. chat: a user turn "
                  "(the prompt) and an assistant turn (the target) through the tokenizer's chat template; plain: "
                  "prompt + target + eos; auto: chat when the tokenizer has a chat template, else plain. The loss "
                  "scores the target and its end (eos, or the template's end of turn) only."},
    )  # fmt: skip


Seq2SeqDataArgsT = TypeVar("Seq2SeqDataArgsT", bound=Seq2SeqDataArguments)


# Tiny sizes of a decoder-only model built from scratch without --config_overrides (as the encoder-decoder default):
# the model types a user most likely names; any other keeps its own sizes.
DECODER_SCRATCH_OVERRIDES = {
    "llama": "hidden_size=64,intermediate_size=256,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=4,"
    "max_position_embeddings=512",
    "gpt2": "n_embd=64,n_layer=2,n_head=4,n_positions=512",
}


class Seq2SeqTask(Task[Seq2SeqDataArgsT, Seq2SeqTrainingArguments]):
    """Pairs of texts, an ``AutoModelForSeq2SeqLM`` or a decoder-only ``AutoModelForCausalLM`` (prompt → target),
    generation-based metrics from :meth:`text_metrics`."""

    training_args_class = Seq2SeqTrainingArguments
    auto_model_class = "AutoModelForSeq2SeqLM"
    head_description = "sequence-to-sequence language-modelling head (an encoder-decoder such as BART, T5, Marian)"
    is_seq2seq = True
    # Fine-tuning a pretrained encoder-decoder: TaiLr's BART setting (lr 1e-4, constant, Adam β2 0.999) after a 3 %
    # linear warm-up (warmup_steps < 1 is a ratio) that keeps Adam's first, gradient-size-blind updates small; the
    # from-scratch inverse-sqrt schedule with its step-count warm-up and β2 0.98 (translation) do not apply.
    finetune_defaults: dict[str, Any] = {
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 0.03,
        "adam_beta2": 0.999,
    }
    # (package, metric name) of text_metrics: an optional dependency, checked before a run that evaluates
    metric_package: tuple[str, str] = ("", "")
    headline_metrics: tuple[str, ...] = ("loss", "perplexity", "token_accuracy", "ece", "gen_len")
    # decoder-only: the prompt a source becomes (``--prompt_template``) and the placeholders it may use
    default_prompt_template: str = "{source}\n\n"
    prompt_placeholders: tuple[str, ...] = ("source",)
    decoder_only: bool = False  # set by for_config

    def for_config(self, config: Any, origin: str = "") -> Seq2SeqTask[Seq2SeqDataArgsT]:
        """The task for a model with ``config``: itself for an encoder-decoder, a decoder-only copy for a model
        ``AutoModelForCausalLM`` loads; an error naming both heads for any other."""
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        if type(config) in AutoModelForSeq2SeqLM._model_mapping:
            return self
        if type(config) not in AutoModelForCausalLM._model_mapping:
            raise ValueError(
                f"a {config.model_type!r} model{origin} has neither a {self.head_description} nor a causal "
                f"language-modelling head (a decoder-only LLM such as Llama, Qwen, SmolLM): the {self.name} task "
                "needs a model that AutoModelForSeq2SeqLM or AutoModelForCausalLM can load"
            )
        task = copy.copy(self)
        task.decoder_only, task.is_seq2seq = True, False
        task.auto_model_class = "AutoModelForCausalLM"
        task.head_description = "causal language-modelling head (a decoder-only LLM such as Llama, Qwen, SmolLM)"
        return task

    def scratch_overrides(self, model_type: str) -> str | None:
        return DECODER_SCRATCH_OVERRIDES.get(model_type) or super().scratch_overrides(model_type)

    def prompt_values(self, data_args: Seq2SeqDataArgsT) -> dict[str, str]:
        """Values of the placeholders other than {source} (translation: the languages)."""
        return {}

    def _defaults_epilog(self) -> str | None:
        placeholders = ", ".join("{" + p + "}" for p in self.prompt_placeholders)
        prompt = (f"Decoder-only models: the default --prompt_template is {self.default_prompt_template!r} "
                  f"(placeholders {placeholders}).")  # fmt: skip
        return " ".join(part for part in (super()._defaults_epilog(), prompt) if part)

    def prompt_template(self, data_args: Seq2SeqDataArgsT) -> str:
        return data_args.prompt_template if data_args.prompt_template is not None else self.default_prompt_template

    # --- hooks of the two tasks
    def pairs(self, batch: dict[str, list[Any]], data_args: Seq2SeqDataArgsT) -> tuple[list[Any], list[Any]]:
        """(sources, targets) of a batch of raw rows."""
        raise NotImplementedError

    def text_metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        raise NotImplementedError

    # --- shared
    def check_args(
        self, data_args: Seq2SeqDataArgsT, model_args: ModelArguments, training_args: Seq2SeqTrainingArguments
    ) -> None:
        for name in ("max_source_length", "max_target_length"):
            value = getattr(data_args, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer ≥ 2, got {value!r}")
        if data_args.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be ≥ 0, got {data_args.no_repeat_ngram_size!r}")
        beams = training_args.generation_num_beams
        if beams is not None and beams < 1:
            raise ValueError(f"generation_num_beams must be ≥ 1, got {beams!r}")
        evaluates = training_args.do_eval or training_args.do_predict or training_args.eval_strategy != "no"
        if evaluates and self.metric_package[0]:
            check_metric_package(*self.metric_package)
        if data_args.prompt_completion_format not in ("auto", "chat", "plain"):
            raise ValueError(
                f"prompt_completion_format must be auto, chat or plain, got {data_args.prompt_completion_format!r}"
            )
        if data_args.prompt_template is not None:
            self._check_template(data_args.prompt_template)

    def _check_template(self, template: str) -> None:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as err:
            raise ValueError(f"prompt_template {template!r} is not a valid template ({err}); write {{{{ and }}}} "
                             "for a literal brace") from err  # fmt: skip
        unknown = sorted(set(names) - set(self.prompt_placeholders))
        if unknown or "source" not in names:
            allowed = ", ".join("{" + p + "}" for p in self.prompt_placeholders)
            problem = f"has unknown placeholders {unknown}" if unknown else "has no {source} placeholder"
            raise ValueError(f"prompt_template {template!r} {problem}: it takes {allowed}")

    def check_model_kind(self, data_args: Seq2SeqDataArgsT) -> None:
        """Options a path would not apply are refused on it: the prompt options on an encoder-decoder."""
        if self.decoder_only:
            return
        if data_args.prompt_template is not None:
            raise ValueError(
                "--prompt_template applies to decoder-only models, but this model is an encoder-decoder (it reads "
                "the source as it is; --source_prefix puts text before it): remove --prompt_template"
            )
        if data_args.prompt_completion_format != "auto":
            raise ValueError(
                f"--prompt_completion_format {data_args.prompt_completion_format} applies to decoder-only models, but "
                "this model is an encoder-decoder: remove it"
            )

    def max_length_needed(self, data_args: Seq2SeqDataArgsT) -> int:
        if not self.decoder_only:
            return max(data_args.max_source_length, data_args.max_target_length)
        # prompt → target in one sequence: a template token is at least one character (plus bos/eos)
        template = self.prompt_template(data_args).format(source="", **self.prompt_values(data_args))
        prefix = len(data_args.source_prefix)
        return data_args.max_source_length + data_args.max_target_length + len(template) + prefix + 2

    def tokenizer_max_length(self, data_args: Seq2SeqDataArgsT) -> int | None:
        return None if self.decoder_only else self.max_length_needed(data_args)  # decoder-only: sources cut here

    def texts(self, dataset: Dataset, data_args: Seq2SeqDataArgsT) -> Iterator[str]:
        for start in range(0, len(dataset), 1000):
            sources, targets = self.pairs(dataset[start : start + 1000], data_args)
            yield from (text for text in sources + targets if isinstance(text, str) and text)
        if self.decoder_only:  # a tokenizer trained here must also spell the prompt's own words
            yield self.prompt_template(data_args).format(source="", **self.prompt_values(data_args))

    def preprocess(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: Seq2SeqDataArgsT,
        training_args: Seq2SeqTrainingArguments,
        split: str,
        *,
        dropped: dict[str, Any] | None = None,
    ) -> Dataset:  # encoder-decoder: drops nothing, over-long pairs are truncated
        if self.decoder_only:
            return self._preprocess_prompt_target(dataset, tokenizer, data_args, split, dropped)

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            sources, targets = self.pairs(batch, data_args)
            # Rows with a missing or empty side are dropped (a batched map may return fewer rows).
            kept = [
                (data_args.source_prefix + s, t)
                for s, t in zip(sources, targets, strict=True)
                if isinstance(s, str) and s.strip() and isinstance(t, str) and t.strip()
            ]
            model_inputs = tokenizer([s for s, _ in kept], max_length=data_args.max_source_length, truncation=True)
            labels = tokenizer(
                text_target=[t for _, t in kept], max_length=data_args.max_target_length, truncation=True
            )
            model_inputs["labels"] = labels["input_ids"]
            return dict(model_inputs)

        return dataset.map(
            tokenize,
            batched=True,
            remove_columns=dataset.column_names,
            num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split}",
        )

    def _preprocess_prompt_target(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: Seq2SeqDataArgsT,
        split: str,
        dropped: dict[str, Any] | None,
    ) -> Dataset:
        """Decoder-only: each pair as prompt → target (:func:`.prompting.encode_prompt_completion`), labels on the
        target and its end only. The source is cut to ``max_source_length`` tokens; the target never is: an example
        whose scored tokens exceed ``max_target_length`` (the generation budget) is dropped and counted."""
        chat = uses_chat_template(tokenizer, data_args.prompt_completion_format, "prompt_completion_format")
        template, values = self.prompt_template(data_args), self.prompt_values(data_args)
        limit = data_args.max_target_length

        def encode_batch(batch: dict[str, list[Any]]) -> Iterator[Encoded | None]:
            for source, target in zip(*self.pairs(batch, data_args), strict=True):
                if not (isinstance(source, str) and source.strip() and isinstance(target, str) and target.strip()):
                    yield None  # counted by data.check_rows
                    continue
                source = truncate_text(tokenizer, data_args.source_prefix + source, data_args.max_source_length)
                prompt = template.format(source=source, **values)
                yield encode_prompt_completion(tokenizer, prompt.strip() if chat else prompt, target, chat=chat)

        return tokenize_examples(
            dataset, encode_batch, split=split,
            unfit=lambda labels: sum(label != IGNORE_INDEX for label in labels) > limit,
            reason=f"a target longer than max_target_length={limit} tokens (with its end)",
            remedy="raise max_target_length", dropped=dropped, max_dropped_fraction=data_args.max_dropped_fraction,
            num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split} (prompt → target{', chat template' if chat else ''})",
        )  # fmt: skip

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> DataCollator:
        if self.decoder_only:
            return PaddingCollator(tokenizer.pad_token_id)
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def configure_model(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data_args: Seq2SeqDataArgsT,
        training_args: Seq2SeqTrainingArguments,
    ) -> None:
        # Generation settings live in the model's generation config, so that the saved model generates the same
        # way; Seq2SeqTrainer passes generation_max_length / generation_num_beams explicitly as well.
        if training_args.generation_max_length is None:
            training_args.generation_max_length = data_args.max_target_length
        generation = model.generation_config
        if self.decoder_only:
            self._configure_decoder_generation(model, tokenizer, data_args, training_args)
            return
        generation.max_length = training_args.generation_max_length
        generation.num_beams = training_args.generation_num_beams or 1
        generation.no_repeat_ngram_size = data_args.no_repeat_ngram_size
        generation.length_penalty = data_args.length_penalty
        generation.early_stopping = generation.num_beams > 1
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
            value = getattr(model.config, name, None)
            if value is not None:
                setattr(generation, name, value)

    def _configure_decoder_generation(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data_args: Seq2SeqDataArgsT,
        training_args: Seq2SeqTrainingArguments,
    ) -> None:
        """Decoder-only generation: :func:`.generation.configure_prompt_generation` with ``generation_max_length``
        new tokens and ``generation_num_beams`` beams."""
        configure_prompt_generation(
            model, tokenizer, max_new_tokens=training_args.generation_max_length,
            num_beams=training_args.generation_num_beams or 1, no_repeat_ngram_size=data_args.no_repeat_ngram_size,
            length_penalty=data_args.length_penalty,
        )  # fmt: skip

    def evaluates_by_generation(self, data_args: Seq2SeqDataArgsT, training_args: Seq2SeqTrainingArguments) -> bool:
        return bool(training_args.predict_with_generate)

    def describe_examples(self, data_args: Seq2SeqDataArgsT, tokenizer: PreTrainedTokenizerBase) -> dict | None:
        if not self.decoder_only:
            return None
        chat = uses_chat_template(tokenizer, data_args.prompt_completion_format, "prompt_completion_format")
        return {
            "kind": "prompt → target on a decoder-only model (loss on the target and its end only)",
            "format": "chat template (user turn: the prompt; assistant turn: the target)" if chat
            else "plain: prompt + target + eos",
            "prompt_template": self.prompt_template(data_args),
            "max_source_length": data_args.max_source_length,
            "max_target_length": data_args.max_target_length,
        }  # fmt: skip

    def prompt_generation(self, data_args: Seq2SeqDataArgsT, training_args: Seq2SeqTrainingArguments) -> dict | None:
        if not (self.decoder_only and training_args.predict_with_generate):
            return None
        return {"max_new_tokens": training_args.generation_max_length,
                "num_beams": training_args.generation_num_beams or 1}  # fmt: skip

    def compute_metrics(self, tokenizer: PreTrainedTokenizerBase, data_args: Seq2SeqDataArgsT) -> MetricsFunction:
        return generation_metrics(tokenizer, self.text_metrics)

    def write_predictions(
        self, output: PredictionOutput, tokenizer: PreTrainedTokenizerBase, output_dir: str
    ) -> str | None:
        return write_generated_predictions(output, tokenizer, output_dir)
