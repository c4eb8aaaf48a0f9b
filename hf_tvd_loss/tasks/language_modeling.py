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

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, Literal

import torch
from datasets import Dataset
from transformers import TrainingArguments

if TYPE_CHECKING:
    from transformers import DataCollator, PreTrainedModel, PreTrainedTokenizerBase

from .arguments import DataArguments, ModelArguments
from .base import Task
from .data import TOOLS_COLUMN, check_columns_present, parse_tools, without_nulls
from .synthetic import language_modeling_corpus

__all__ = [
    "LanguageModelingDataArguments",
    "LanguageModelingTask",
    "PaddingCollator",
    "data_format",
    "tokenize_instruction",
]

IGNORE_INDEX = -100
_CUT = "_no_completion_within_block"  # a temporary column of instruction preprocessing
logger = logging.getLogger("hf_tvd_loss.tasks")


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


def _messages(value: Any) -> list[dict[str, Any]]:
    """The messages as the chat template should see them: the keys a dataset filled with null are left out (a
    message keeps ``content``, null for an assistant turn that only calls tools)."""
    return [{**without_nulls(m), "content": m.get("content")} for m in value or []]


def _render_prompt_completion(
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[dict[str, Any]],
    completion: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """TRL's conversational prompt-completion: the whole conversation through the chat template, and the character
    span of the completion, which starts where the prompt rendered with the generation prompt ends."""
    text = tokenizer.apply_chat_template(prompt + completion, tools=tools, tokenize=False)
    before = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)
    if not text.startswith(before):
        raise ValueError(
            "the tokenizer's chat template renders the prompt differently when the completion follows, so the "
            "completion tokens cannot be located; set --completion_only_loss false to score every token"
        )
    return text, [(len(before), len(text))]


def _has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template renders it, and the character spans of its assistant turns.

    A turn's span runs from the end of the conversation before it (rendered with the generation prompt, as at
    inference) to the end of the conversation including it, so it holds the reply and the template's end-of-turn
    tokens. Needs a template whose rendering of a conversation starts with the rendering of each of its prefixes.
    """
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if index == 0:
            raise ValueError("a conversation starts with an assistant turn: it needs a user (or system) turn first")
        before = tokenizer.apply_chat_template(
            messages[:index], tools=tools, tokenize=False, add_generation_prompt=True
        )
        upto = tokenizer.apply_chat_template(messages[: index + 1], tools=tools, tokenize=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                "the tokenizer's chat template renders a conversation differently from its beginning, so the "
                "assistant tokens cannot be located; set --completion_only_loss false to score every token"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_instruction(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    spans: list[tuple[int, int]],
    *,
    add_special_tokens: bool,
    append_eos: bool,
) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and, per token, whether it starts inside one of the character ``spans``.

    ``add_special_tokens``: the tokenizer's own bos (not its trailing eos, which ``append_eos`` adds, scored as the
    end of the completion). Fast tokenizers tokenise the whole text (as at inference) and use character offsets;
    others tokenise the pieces between span boundaries one by one.
    """
    prefix: list[int] = []
    if add_special_tokens and tokenizer.bos_token_id is not None:
        with_special = tokenizer("a")["input_ids"]
        if with_special and with_special[0] == tokenizer.bos_token_id:
            prefix = [tokenizer.bos_token_id]
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        scored = [any(a <= start < b for a, b in spans) for start, _ in encoded["offset_mapping"]]
    else:
        cuts = sorted({0, len(text), *(c for span in spans for c in span)})
        ids, scored = [], []
        for a, b in zip(cuts, cuts[1:]):
            piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
            inside = any(s <= a < e for s, e in spans)
            ids += piece
            scored += [inside] * len(piece)
    ids, scored = prefix + ids, [False] * len(prefix) + scored
    if append_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        scored.append(True)
    return ids, scored


class PaddingCollator:
    """Pads ``input_ids`` (pad token), ``attention_mask`` (0) and ``labels`` (-100) on the right to the longest
    example of the batch; examples of equal length (text blocks) are stacked unchanged."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch: dict[str, torch.Tensor] = {}
        for key in features[0]:
            if key in pads:
                batch[key] = torch.tensor([list(f[key]) + [pads[key]] * (longest - len(f[key])) for f in features])
            else:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


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
    # Fine-tuning a pretrained model: the from-scratch 2e-3 destroys one in a few steps (issue 13: Gemma-3-270m went
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

    drops_empty_texts = False  # blank lines of a .txt file are normal

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
        has_template = _has_chat_template(tokenizer)
        conversational = form == "prompt_completion" and _conversational(data_args, dataset.features)
        if (form == "messages" or conversational) and not has_template:
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
        chat = (
            form == "messages"
            or conversational
            or (
                data_args.prompt_completion_format == "chat"
                or (data_args.prompt_completion_format == "auto" and has_template)
            )
        )
        if chat and not has_template:
            raise ValueError("--prompt_completion_format chat needs a tokenizer with a chat template")
        block, only = data_args.block_size, data_args.completion_only_loss

        def encode(row: dict[str, Any]) -> tuple[list[int], list[bool]] | None:
            tools = parse_tools(row.get(TOOLS_COLUMN)) if form == "messages" or conversational else None
            if form == "messages":
                messages = _messages(row[data_args.messages_column])
            elif conversational:
                prompt, completion = (
                    _messages(row[data_args.prompt_column]),
                    _messages(row[data_args.completion_column]),
                )
                if not prompt or not completion:
                    return None
                text, spans = _render_prompt_completion(tokenizer, prompt, completion, tools)
                return tokenize_instruction(tokenizer, text, spans, add_special_tokens=False, append_eos=False)
            else:
                prompt, completion = row[data_args.prompt_column], row[data_args.completion_column]
                if not (isinstance(prompt, str) and isinstance(completion, str) and completion.strip()):
                    return None
                if not chat:
                    text = prompt + completion
                    return tokenize_instruction(
                        tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True, append_eos=True
                    )
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            if not any(m["role"] == "assistant" for m in messages):
                return None
            text, spans = _render_chat(tokenizer, messages, tools)
            return tokenize_instruction(tokenizer, text, spans, add_special_tokens=False, append_eos=False)

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            # Rows encode() skips (null or empty chats, no assistant turn) were counted by data.check_rows;
            # examples whose completion lies beyond block_size are kept here, marked, and counted below.
            out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": [], _CUT: []}
            for index in range(len(next(iter(batch.values())))):
                encoded = encode({key: values[index] for key, values in batch.items()})
                if encoded is None:
                    continue
                ids, scored = encoded[0][:block], encoded[1][:block]
                labels = [t if s or not only else IGNORE_INDEX for t, s in zip(ids, scored)]
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(labels)
                out[_CUT].append(
                    all(label == IGNORE_INDEX for label in labels[1:])
                )  # nothing to score after the shift
            return out

        tokenized = dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, num_proc=data_args.preprocessing_num_workers,
            desc=f"tokenising {split} ({form}{', conversational' if conversational else ''}"
            f"{', chat template' if chat else ''})",
        )  # fmt: skip
        cut = sum(tokenized[_CUT]) if len(tokenized) else 0
        if cut and cut < len(tokenized):
            # counted with the rows check_rows already dropped from this split: the threshold is for them all
            # (idempotent: building twice from one Prepared replaces this count instead of adding it again)
            reason = f"no completion token within block_size={block}"
            report = (dropped or {}).get(split) or {"dropped": 0, "rows": len(tokenized), "reasons": {}}
            reasons = {key: count for key, count in report["reasons"].items() if key != reason}
            total, rows = report["dropped"] - report["reasons"].get(reason, 0) + cut, report["rows"]
            share = f"{cut} of {len(tokenized)} examples ({100 * cut / len(tokenized):.1f}%)"
            if total > cut:
                share += f" (with the rows dropped before: {total} of {rows}, {100 * total / rows:.1f}%)"
            if total / rows > data_args.max_dropped_fraction:
                raise ValueError(
                    f"the {split} split: {share} have no completion token within block_size={block} and would be "
                    f"dropped, more than max_dropped_fraction={data_args.max_dropped_fraction:g}: raise block_size, "
                    "or pass --max_dropped_fraction to accept"
                )
            logger.warning("the %s split: dropping %s with no completion token within block_size=%s", split, share,
                           block)  # fmt: skip
            if dropped is not None:
                dropped[split] = {"dropped": total, "rows": rows, "reasons": {**reasons, reason: cut}}
        tokenized = tokenized.filter(lambda cut_off: not cut_off, input_columns=_CUT).remove_columns(_CUT)
        if len(tokenized) == 0:
            raise ValueError(
                f"the {split} split has no example with a completion token left within block_size={block}: raise "
                "block_size or check the completion/assistant columns"
            )
        return tokenized

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
