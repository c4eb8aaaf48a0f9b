"""Causal language modelling on plain text or on instruction data.

* plain text (a ``text`` column): texts are concatenated (each ending with eos) and cut into blocks of
  ``block_size`` tokens; every token is scored.
* instruction data: ``prompt`` / ``completion`` columns, or a ``messages`` column of chat turns
  (``[{"role": ..., "content": ...}]``). Chat turns are rendered with the tokenizer's chat template (an error if it
  has none); prompt/completion pairs too when it has one (``--prompt_completion_format``). Each example is its own
  sequence (truncated to ``block_size``, padded in the batch, never packed with another), and by default only the
  completion / assistant tokens are scored: every other label is -100 (``--completion_only_loss``).

Metrics: perplexity (from the plain NLL the trainer logs next to the γ-CE objective) and token-level
calibration. Default (no options): a tiny GPT-2 built from a config on a synthetic news corpus, TaiLr's
language-modelling setting γ=1e-7, b=0.2, ε=0 (``configs/language_modeling/tailr.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, Literal

from datasets import Dataset
from transformers import TrainingArguments

if TYPE_CHECKING:
    from transformers import DataCollator, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.trainer_utils import PredictionOutput

from .arguments import DataArguments, ModelArguments
from .base import MetricsFunction, Task
from .data import TOOLS_COLUMN, check_columns_present, parse_tools
from .generation import configure_prompt_generation, generation_metrics, write_generated_predictions
from .metrics import check_metric_package, load_metric
from .prompting import (
    IGNORE_INDEX,
    Encoded,
    PaddingCollator,
    encode_prompt_completion,
    has_chat_template,
    messages_for_template,
    render_chat,
    render_prompt_completion,
    tokenize_examples,
    tokenize_instruction,
    uses_chat_template,
)
from .synthetic import language_modeling_corpus

__all__ = [
    "LanguageModelingDataArguments",
    "LanguageModelingTask",
    "PaddingCollator",
    "data_format",
    "tokenize_instruction",
]


@dataclass
class LanguageModelingDataArguments(DataArguments):
    text_column: str = field(default="text", metadata={"help": "Column holding the text (a .txt file gives 'text')."})
    block_size: int = field(
        default=128,
        metadata={"help": "Plain text: tokens per training example (texts are joined, each ending with the eos token, "
                  "and cut into blocks of this length; the remainder is dropped). Instruction data: the longest "
                  "example, longer ones are truncated (an example left with no completion token is dropped)."},
    )  # fmt: skip
    data_format: Literal["auto", "text", "prompt_completion", "messages"] = field(
        default="auto",
        metadata={"help": "auto: 'messages' when the data has --messages_column, else 'prompt_completion' when it "
                  "has --prompt_column and --completion_column, else 'text' (--text_column)."},
    )  # fmt: skip
    prompt_column: str = field(
        default="prompt",
        metadata={"help": "Instruction data: the prompt column: texts, or lists of {'role', 'content'} messages "
                  "(TRL's conversational prompt-completion format, rendered with the chat template)."},
    )  # fmt: skip
    completion_column: str = field(
        default="completion",
        metadata={"help": "Instruction data: the completion column: texts, or lists of messages (with a "
                  "conversational prompt)."},
    )  # fmt: skip
    messages_column: str = field(
        default="messages",
        metadata={"help": "Chat data: a column of conversations, lists of {'role', 'content'} (roles system, user, "
                  "assistant), rendered with the tokenizer's chat template."},
    )  # fmt: skip
    completion_only_loss: bool = field(
        default=True,
        metadata={"help": "Instruction data: score only the completion (prompt/completion) or the assistant turns "
                  "(messages); prompt, system and user tokens get label -100. False: score every token."},
    )  # fmt: skip
    prompt_completion_format: Literal["auto", "chat", "plain"] = field(
        default="auto",
        metadata={"help": "How a prompt/completion pair becomes one sequence. chat: a user turn and an assistant turn "
                  "through the tokenizer's chat template; plain: prompt + completion + eos; auto: chat when the "
                  "tokenizer has a chat template, plain otherwise."},
    )  # fmt: skip
    predict_with_generate: bool = field(
        default=False,
        metadata={"help": "Instruction data: also generate a completion for every evaluation and test example from "
                  "its prompt (a chat: up to its last assistant turn) and score it against the reference: ROUGE-L, "
                  "BLEU, chrF, exact match, gen_len; the test split's go to generated_predictions.jsonl. The "
                  "option name and meaning of Seq2SeqTrainingArguments'."},
    )  # fmt: skip
    generation_max_length: int = field(
        default=128, metadata={"help": "With --predict_with_generate: the most new tokens generated per example."}
    )
    generation_num_beams: int = field(
        default=1, metadata={"help": "With --predict_with_generate: beams (1 = greedy decoding)."}
    )


def data_format(column_names: list[str], data_args: LanguageModelingDataArguments) -> str:
    """The format of a split: ``text``, ``prompt_completion`` or ``messages`` (see ``--data_format``)."""
    if data_args.data_format != "auto":
        return data_args.data_format
    if data_args.messages_column in column_names:
        return "messages"
    if data_args.prompt_column in column_names and data_args.completion_column in column_names:
        return "prompt_completion"
    return "text"


def is_conversational_column(feature: Any) -> bool:
    """Whether a ``datasets`` feature holds lists (of ``{'role', 'content'}`` messages), not texts."""
    return isinstance(feature, list) or type(feature).__name__ in ("List", "LargeList", "Sequence")


def _conversational(data_args: LanguageModelingDataArguments, features: Mapping[str, Any] | None) -> bool:
    """Prompt/completion data whose prompt column holds lists of messages (TRL's conversational format)."""
    return bool(features) and is_conversational_column(features.get(data_args.prompt_column))  # type: ignore[union-attr]


class LanguageModelingTask(Task[LanguageModelingDataArguments, TrainingArguments]):
    name = "language_modeling"
    description = "Train or fine-tune a causal language model with the γ-CE (TaiLr) loss."
    data_args_class = LanguageModelingDataArguments
    training_args_class = TrainingArguments
    auto_model_class = "AutoModelForCausalLM"
    head_description = "causal language-modelling head (a decoder such as GPT-2 or Llama)"
    scratch_config_overrides = "n_embd=64,n_layer=2,n_head=4,n_positions=256"
    defaults: dict[str, Any] = {
        "model_type": "gpt2",
        # TaiLr's language-modelling setting: γ tiny, so w = max(b, p/(1e-7 + p)) ≈ 1 except for very unlikely
        # targets, whose weight falls to the floor b
        "gamma": 1e-7,
        "min_weight": 0.2,
        "label_smoothing": 0.0,
        "synthetic_train_examples": 1000,
        "output_dir": "outputs/language_modeling",
        "do_train": True,
        "do_eval": True,
        "do_predict": True,
        # evaluation needs only the loss and the calibration sums, not the [N, V] logits of every batch
        "prediction_loss_only": True,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "learning_rate": 2e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 25,
        "save_strategy": "no",
        "seed": 42,
    }
    # Fine-tuning a pretrained model: the from-scratch 2e-3 destroys one in a few steps (measured: Gemma-3-270m went
    # from perplexity 4.85 to 3.6e8 in three steps). 5e-5 is transformers' own default and run_clm's; a linear decay
    # after a 3 % warm-up (warmup_steps < 1 is a ratio) is the usual SFT recipe: Adam's first updates move every
    # weight by about the learning rate whatever its gradient, which the warm-up keeps small.
    finetune_defaults: dict[str, Any] = {"learning_rate": 5e-5, "lr_scheduler_type": "linear", "warmup_steps": 0.03}

    def check_args(
        self, data_args: LanguageModelingDataArguments, model_args: ModelArguments, training_args: TrainingArguments
    ) -> None:
        block = data_args.block_size
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise ValueError(f"block_size must be an integer ≥ 2, got {block!r}")
        generate = data_args.predict_with_generate
        for name in ("generation_max_length", "generation_num_beams"):
            value = getattr(data_args, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
            if not generate and value != LanguageModelingDataArguments.__dataclass_fields__[name].default:
                raise ValueError(f"--{name} applies to --predict_with_generate, which is off: remove it, or pass "
                                 "--predict_with_generate true")  # fmt: skip
        if generate and not data_args.completion_only_loss:
            raise ValueError("--predict_with_generate generates from the prompt, the tokens the loss does not score; "
                             "with --completion_only_loss false every token is scored: remove one of them")  # fmt: skip
        if generate and not (training_args.do_eval or training_args.do_predict):
            raise ValueError("--predict_with_generate applies to evaluation and prediction, and do_eval and "
                             "do_predict are both false: remove it")  # fmt: skip
        if generate:
            check_metric_package("rouge_score", "ROUGE-L")
            check_metric_package("sacrebleu", "BLEU and chrF")

    def max_length_needed(self, data_args: LanguageModelingDataArguments) -> int:
        return data_args.block_size

    def tokenizer_max_length(self, data_args: LanguageModelingDataArguments) -> int | None:
        return None  # whole texts are tokenised, then cut into blocks

    def synthetic_rows(self, split: str, num_examples: int, seed: int) -> list[dict[str, Any]]:
        return language_modeling_corpus(num_examples, seed=seed)

    def check_columns(
        self, dataset: Dataset, split: str, origin: str, data_args: LanguageModelingDataArguments
    ) -> None:
        form = data_format(dataset.column_names, data_args)
        if form == "text" and data_args.predict_with_generate:
            raise ValueError(
                f"--predict_with_generate generates completions of instruction data (prompt/completion or messages "
                f"columns), but the {split} data ({origin}) is plain text (column {data_args.text_column!r}): remove "
                "--predict_with_generate (plain text is judged by perplexity)"
            )
        if form == "text":
            if data_args.data_format == "auto" and data_args.text_column not in dataset.column_names:
                raise ValueError(
                    f"the {split} data ({origin}) has none of the columns of the language-modelling formats: "
                    f"{data_args.text_column!r} (--text_column), {data_args.prompt_column!r} + "
                    f"{data_args.completion_column!r} (--prompt_column, --completion_column) or "
                    f"{data_args.messages_column!r} (--messages_column); its columns are {dataset.column_names}"
                )
            check_columns_present(dataset, split, origin, {data_args.text_column: "text_column"})
        elif form == "prompt_completion":
            columns = {data_args.prompt_column: "prompt_column", data_args.completion_column: "completion_column"}
            lists = {c: is_conversational_column(dataset.features.get(c)) for c in columns}
            if not any(lists.values()):
                check_columns_present(dataset, split, origin, columns)
                return
            missing = [c for c in columns if c not in dataset.column_names]
            if missing:
                raise ValueError(
                    f"the {split} data ({origin}) has no column {missing[0]!r} (set by --{columns[missing[0]]}); its "
                    f"columns are {dataset.column_names}"
                )
            prompt, completion = data_args.prompt_column, data_args.completion_column
            if lists[prompt] != lists[completion]:
                raise ValueError(
                    f"the {split} data ({origin}): column {prompt!r} holds "
                    f"{'message lists' if lists[prompt] else 'texts'} and column {completion!r} "
                    f"{'message lists' if lists[completion] else 'texts'}: give both as texts or both as lists of "
                    "{'role', 'content'} messages"
                )
        else:
            column = data_args.messages_column
            if column not in dataset.column_names:
                raise ValueError(
                    f"the {split} data ({origin}) has no column {column!r} (set by --messages_column); its columns "
                    f"are {dataset.column_names}"
                )
            if not is_conversational_column(dataset.features.get(column)):  # each row is checked by check_rows
                raise ValueError(
                    f"the {split} data ({origin}): column {column!r} (set by --messages_column) must hold lists of "
                    f"{{'role': ..., 'content': ...}} messages; the first row holds {str(dataset[0][column])[:80]!r}"
                )

    def drops_text(self, option: str, value: str) -> bool:
        # Blank lines of a .txt file are normal (kept). An empty completion leaves the example nothing to score:
        # preprocessing drops it, so count it up front.
        return option == "completion_column" and not value.strip()  # as encode() skips it

    def message_fields(
        self, data_args: LanguageModelingDataArguments, columns: list[str], features: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, bool]]:
        form = data_format(columns, data_args)
        if form == "messages":
            return [(data_args.messages_column, "messages_column", True)]
        if form == "prompt_completion" and _conversational(data_args, features):
            return [(data_args.prompt_column, "prompt_column", False),
                    (data_args.completion_column, "completion_column", False)]  # fmt: skip
        return []

    def text_fields(
        self, data_args: LanguageModelingDataArguments, columns: list[str], features: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str | None, str]]:
        form = data_format(columns, data_args)
        if form == "text":
            return [(data_args.text_column, None, "text_column")]
        if form == "prompt_completion" and not _conversational(data_args, features):
            return [
                (data_args.prompt_column, None, "prompt_column"),
                (data_args.completion_column, None, "completion_column"),
            ]
        return []  # chat messages (also as conversational prompt/completion): lists, checked by check_columns

    def texts(self, dataset: Dataset, data_args: LanguageModelingDataArguments) -> Iterator[str]:
        form = data_format(dataset.column_names, data_args)
        for start in range(0, len(dataset), 1000):
            rows = dataset[start : start + 1000]
            if form == "text":
                values = rows[data_args.text_column]
            elif form == "prompt_completion" and _conversational(data_args, dataset.features):
                chats = rows[data_args.prompt_column] + rows[data_args.completion_column]
                values = [m.get("content") for chat in chats for m in chat or []]
            elif form == "prompt_completion":
                values = rows[data_args.prompt_column] + rows[data_args.completion_column]
            else:
                values = [m.get("content") for chat in rows[data_args.messages_column] for m in chat or []]
            yield from (t for t in values if isinstance(t, str) and t)

    def preprocess(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: LanguageModelingDataArguments,
        training_args: TrainingArguments,
        split: str,
        *,
        dropped: dict[str, Any] | None = None,
    ) -> Dataset:
        form = data_format(dataset.column_names, data_args)
        if form != "text":
            return self._preprocess_instructions(dataset, tokenizer, data_args, split, form, dropped)
        column, block = data_args.text_column, data_args.block_size
        eos = tokenizer.eos_token_id
        # A trained tokenizer appends </s> itself; a pretrained one may not: then eos is added here.
        appends_eos = bool(tokenizer("a")["input_ids"]) and tokenizer("a")["input_ids"][-1] == eos

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            texts = [t for t in batch[column] if isinstance(t, str) and t.strip()]
            ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
            if not appends_eos and eos is not None:
                ids = [row + [eos] for row in ids]
            return {"input_ids": ids}

        def group(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            joined = list(chain.from_iterable(batch["input_ids"]))
            usable = (len(joined) // block) * block
            blocks = [joined[i : i + block] for i in range(0, usable, block)]
            return {
                "input_ids": blocks,
                "attention_mask": [[1] * block for _ in blocks],
                "labels": [list(b) for b in blocks],
            }

        tokenized = dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split}",
        )  # fmt: skip
        grouped = tokenized.map(
            group, batched=True, batch_size=1000, num_proc=data_args.preprocessing_num_workers,
            desc=f"grouping {split} into blocks of {block}",
        )  # fmt: skip
        if len(grouped) == 0:
            raise ValueError(
                f"the {split} split has fewer tokens than block_size={block} (batches of 1000 texts are grouped): "
                "lower block_size or add data"
            )
        return grouped

    def _instruction_encoder(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data_args: LanguageModelingDataArguments,
        split: str,
        form: str,
        conversational: bool,
    ) -> tuple[Callable[[dict[str, Any]], Encoded | None], bool]:
        """The function that turns one raw row into token ids and the scored mask (None: a row check_rows counted
        as dropped), and whether it uses the chat template; format problems are refused here, before tokenising."""
        chat_data = form == "messages" or conversational
        if chat_data and not has_chat_template(tokenizer):
            column = data_args.messages_column if form == "messages" else data_args.prompt_column
            raise ValueError(
                f"the {split} data has chat messages (column {column!r}) but the tokenizer has no chat template to "
                "render them: use a tokenizer that has one (--tokenizer_name / --model_name_or_path), or give the "
                "data as prompt/completion texts"
            )
        if conversational and data_args.prompt_completion_format == "plain":
            raise ValueError(
                "--prompt_completion_format plain joins prompt and completion texts, but the prompt/completion "
                "columns hold lists of messages: leave it at auto (the chat template renders them)"
            )
        chat = chat_data or uses_chat_template(tokenizer, data_args.prompt_completion_format,
                                               "prompt_completion_format")  # fmt: skip

        def encode(row: dict[str, Any]) -> Encoded | None:
            if not chat_data:  # prompt/completion texts
                prompt, completion = row[data_args.prompt_column], row[data_args.completion_column]
                if not (isinstance(prompt, str) and isinstance(completion, str) and completion.strip()):
                    return None
                return encode_prompt_completion(tokenizer, prompt, completion, chat=chat)
            tools = parse_tools(row.get(TOOLS_COLUMN))
            if conversational:
                prompt = messages_for_template(row[data_args.prompt_column])
                completion = messages_for_template(row[data_args.completion_column])
                if not prompt or not completion:
                    return None
                text, spans = render_prompt_completion(tokenizer, prompt, completion, tools)
            else:
                messages = messages_for_template(row[data_args.messages_column])
                if not any(m["role"] == "assistant" for m in messages):
                    return None
                text, spans = render_chat(tokenizer, messages, tools)
            return tokenize_instruction(tokenizer, text, spans, add_special_tokens=False, append_eos=False)

        return encode, chat

    def _preprocess_instructions(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data_args: LanguageModelingDataArguments,
        split: str,
        form: str,
        dropped: dict[str, Any] | None = None,
    ) -> Dataset:
        """One sequence per example (no packing), completion-only labels unless ``completion_only_loss`` is off."""
        conversational = form == "prompt_completion" and _conversational(data_args, dataset.features)
        encode, chat = self._instruction_encoder(tokenizer, data_args, split, form, conversational)
        block, only = data_args.block_size, data_args.completion_only_loss

        def encode_batch(batch: dict[str, list[Any]]) -> Iterator[Encoded | None]:
            # Rows encode() skips (null or empty chats, no assistant turn) were counted by data.check_rows.
            for index in range(len(next(iter(batch.values())))):
                yield encode({key: values[index] for key, values in batch.items()})

        return tokenize_examples(
            dataset, encode_batch, split=split, max_length=block, completion_only=only,
            unfit=lambda labels: all(label == IGNORE_INDEX for label in labels[1:]),  # nothing scored after the shift
            reason=f"no completion token within block_size={block}",
            remedy="raise block_size or check the completion/assistant columns", dropped=dropped,
            max_dropped_fraction=data_args.max_dropped_fraction, num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split} ({form}{', conversational' if conversational else ''}"
            f"{', chat template' if chat else ''})",
        )  # fmt: skip

    # --- evaluation by generation (instruction data, --predict_with_generate)
    generated_metric_names = ("rougeL", "bleu", "chrf", "exact_match")

    def evaluates_by_generation(
        self, data_args: LanguageModelingDataArguments, training_args: TrainingArguments
    ) -> bool:
        return data_args.predict_with_generate

    def prompt_generation(
        self, data_args: LanguageModelingDataArguments, training_args: TrainingArguments
    ) -> dict[str, Any] | None:
        if not data_args.predict_with_generate:
            return None
        return {"max_new_tokens": data_args.generation_max_length, "num_beams": data_args.generation_num_beams}

    def compute_metrics(
        self, tokenizer: PreTrainedTokenizerBase, data_args: LanguageModelingDataArguments
    ) -> MetricsFunction | None:
        if not data_args.predict_with_generate:
            return None
        return generation_metrics(tokenizer, completion_metrics)

    def write_predictions(
        self, output: PredictionOutput, tokenizer: PreTrainedTokenizerBase, output_dir: str
    ) -> str | None:
        return write_generated_predictions(output, tokenizer, output_dir)

    def data_collator(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> DataCollator:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return PaddingCollator(pad if pad is not None else 0)

    def configure_model(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data_args: LanguageModelingDataArguments,
        training_args: TrainingArguments,
    ) -> None:
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if data_args.predict_with_generate:
            configure_prompt_generation(model, tokenizer, max_new_tokens=data_args.generation_max_length,
                                        num_beams=data_args.generation_num_beams)  # fmt: skip


def completion_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Scores of generated completions against the references: ROUGE-L and BLEU / chrF (the scripts' metric
    modules, 0-100), and exact match (share of completions equal to their reference after stripping, 0-100)."""
    rouge = load_metric("rouge").compute(predictions=predictions, references=references)
    bleu = load_metric("bleu").compute(predictions=predictions, references=references)
    exact = [p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)]
    return {"rougeL": 100.0 * rouge["rougeL"], "bleu": bleu["bleu"], "chrf": bleu["chrf"],
            "exact_match": 100.0 * sum(exact) / max(1, len(exact))}  # fmt: skip
