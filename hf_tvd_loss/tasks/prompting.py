"""Prompt → target examples for decoder-only models: one mechanism for every task that trains a causal LM on pairs.

The language-modelling script's instruction data (prompt/completion texts, chat messages) and the summarization and
translation scripts' pairs on a decoder-only model all become one token sequence per example, prompt then target,
with labels -100 on the prompt (TRL's completion-only loss):

* chat format (the tokenizer has a chat template): the prompt is a user turn, the target the assistant turn,
  rendered by the template; the scored span is the assistant turn with the template's end-of-turn tokens, which the
  model learns to emit and generation stops at.
* plain format: ``prompt + target + eos``; the scored span is the target and the eos token.

The spans are located on characters of the rendered text (fast tokenizers tokenise the whole text, as at inference,
and map offsets back), so the tokens are those the model sees when it is prompted. Also here: the right-padding
collator of training and teacher-forced evaluation, the left-padding collator of generation, and the count of
examples dropped while tokenising, judged against ``--max_dropped_fraction`` with the rows dropped before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from .data import without_nulls

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "LeftPaddingPromptCollator",
    "PaddingCollator",
    "PromptFormat",
    "encode_prompt_completion",
    "has_chat_template",
    "labels_for",
    "prompt_length",
    "record_dropped",
    "render_chat",
    "render_prompt_completion",
    "tokenize_examples",
    "tokenize_instruction",
    "truncate_text",
    "uses_chat_template",
]

IGNORE_INDEX = -100
PromptFormat = Literal["auto", "chat", "plain"]
logger = logging.getLogger("hf_tvd_loss.tasks")


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, prompt_format: str, option: str) -> bool:
    """Whether prompt → target pairs go through the chat template: ``chat`` (refused without a template),
    ``plain``, or ``auto`` (chat when the tokenizer has a template). ``option`` names the option in the error."""
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        raise ValueError(f"--{option} chat needs a tokenizer with a chat template (this one has none): use plain")
    return prompt_format == "chat" or (prompt_format == "auto" and has_chat_template(tokenizer))


def messages_for_template(value: Any) -> list[dict[str, Any]]:
    """The messages as the chat template should see them: the keys a dataset filled with null are left out (a
    message keeps ``content``, null for an assistant turn that only calls tools)."""
    return [{**without_nulls(m), "content": m.get("content")} for m in value or []]


def render_prompt_completion(
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


def render_chat(
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


def encode_prompt_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, *, chat: bool
) -> tuple[list[int], list[bool]]:
    """One prompt → completion pair of texts as token ids and the scored mask: a user and an assistant turn through
    the chat template (``chat``), else ``prompt + completion + eos`` (with the tokenizer's bos, if it adds one)."""
    if not chat:
        text = prompt + completion
        return tokenize_instruction(tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True,
                                    append_eos=True)  # fmt: skip
    text, spans = render_chat(tokenizer, [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": completion}])  # fmt: skip
    return tokenize_instruction(tokenizer, text, spans, add_special_tokens=False, append_eos=False)


def labels_for(ids: list[int], scored: list[bool], completion_only: bool = True) -> list[int]:
    """Labels of one example: the token where it is scored (every token unless ``completion_only``), else -100."""
    return [t if s or not completion_only else IGNORE_INDEX for t, s in zip(ids, scored)]


def prompt_length(labels: list[int]) -> int:
    """Tokens before the last scored span: the prompt a model generates the completion from. A prompt → target
    example has one span (the target and its end); a chat of several turns is answered at its last assistant turn,
    the earlier turns (their answers included) being the prompt."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    if end == 0:
        return len(labels)
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


Encoded = tuple[list[int], list[bool]]  # token ids and, per token, whether it is scored
_UNFIT = "_tvd_unfit"  # a temporary column: the example cannot be trained on within the length limit


def tokenize_examples(
    dataset: Dataset,
    encode_batch: Callable[[dict[str, list[Any]]], Iterable[Encoded | None]],
    *,
    split: str,
    unfit: Callable[[list[int]], bool],
    reason: str,
    remedy: str,
    dropped: dict[str, Any] | None,
    max_dropped_fraction: float,
    max_length: int | None = None,
    completion_only: bool = True,
    num_proc: int | None = None,
    desc: str = "",
) -> Dataset:
    """The one tokenisation of prompt → target examples, shared by the summarization and translation scripts on a
    decoder-only model and the language-modelling script's instruction data.

    ``encode_batch`` turns a batch of raw rows into one :data:`Encoded` per row (None: a row ``data.check_rows``
    already counted as dropped). Each is cut to ``max_length`` tokens (None: never cut), labelled (:func:`labels_for`
    with ``completion_only``) and judged by ``unfit(labels)``: the examples that cannot be trained on within the limit
    are counted with :func:`record_dropped` (``reason``, ``remedy``) and dropped; none left is refused.
    """

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": [], _UNFIT: []}
        for encoded in encode_batch(batch):
            if encoded is None:
                continue
            ids, scored = encoded if max_length is None else (encoded[0][:max_length], encoded[1][:max_length])
            labels = labels_for(ids, scored, completion_only)
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out[_UNFIT].append(unfit(labels))
        return out

    tokenized = dataset.map(
        tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc=desc or None
    )
    count = sum(tokenized[_UNFIT]) if len(tokenized) else 0
    record_dropped(dropped, split, reason, count, len(tokenized), max_dropped_fraction, remedy)
    tokenized = tokenized.filter(lambda no: not no, input_columns=_UNFIT).remove_columns(_UNFIT)
    if len(tokenized) == 0:
        raise ValueError(f"the {split} split: every example has {reason}, none is left to train on: {remedy}")
    return tokenized


def truncate_text(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """``text`` cut after its first ``max_tokens`` tokens (tokenised alone, without special tokens); unchanged when
    it has no more. Cut on characters (fast tokenizers' offsets), so the kept part is the original text."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def record_dropped(
    dropped: dict[str, Any] | None,
    split: str,
    reason: str,
    count: int,
    examples: int,
    max_dropped_fraction: float,
    remedy: str,
) -> None:
    """Count ``count`` of ``examples`` examples dropped while tokenising ``split`` for ``reason``, together with the
    rows ``data.check_rows`` already dropped from it (``dropped[split]``): above ``max_dropped_fraction`` of them all
    a ``ValueError`` names the share and ``remedy``; else a warning, and the report gains the reason.

    Idempotent: building twice from one ``Prepared`` replaces this reason's count instead of adding it again.
    """
    if not count or count >= examples:  # none left: the caller refuses the split with its own reason
        return
    report = (dropped or {}).get(split) or {"dropped": 0, "rows": examples, "reasons": {}}
    reasons = {key: n for key, n in report["reasons"].items() if key != reason}
    total, rows = report["dropped"] - report["reasons"].get(reason, 0) + count, report["rows"]
    share = f"{count} of {examples} examples ({100 * count / examples:.1f}%)"
    if total > count:
        share += f" (with the rows dropped before: {total} of {rows}, {100 * total / rows:.1f}%)"
    if total / rows > max_dropped_fraction:
        raise ValueError(
            f"the {split} split: {share} have {reason} and would be dropped, more than "
            f"max_dropped_fraction={max_dropped_fraction:g}: {remedy}, or pass --max_dropped_fraction to accept"
        )
    logger.warning("the %s split: dropping %s with %s", split, share, reason)
    if dropped is not None:
        dropped[split] = {"dropped": total, "rows": rows, "reasons": {**reasons, reason: count}}


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


class LeftPaddingPromptCollator:
    """The prompts of tokenised prompt → target examples (the tokens before the last scored span), padded on the
    left to the longest of the batch, for generation; ``index`` carries each example's position in the dataset and
    ``target`` its scored tokens (right-padded with -100), the reference the generated text is scored against."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        prompts, targets = [], []
        for f in features:
            labels = list(f["labels"])
            cut = prompt_length(labels)
            prompts.append(list(f["input_ids"])[:cut])
            targets.append([t for t in labels[cut:] if t != IGNORE_INDEX])
        longest = max(len(p) for p in prompts)
        longest_target = max(1, max(len(t) for t in targets))
        return {
            "input_ids": torch.tensor([[self.pad_token_id] * (longest - len(p)) + p for p in prompts]),
            "attention_mask": torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts]),
            "target": torch.tensor([t + [IGNORE_INDEX] * (longest_target - len(t)) for t in targets]),
            "index": torch.tensor([int(f["index"]) for f in features]),
        }
