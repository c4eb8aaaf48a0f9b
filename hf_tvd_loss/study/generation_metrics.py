"""Quality of open-ended generation: repetition and diversity of sampled continuations.

The metrics of the neural text degeneration literature, computed on whitespace-separated words of the decoded text
(so models with different tokenizers are comparable):

* ``distinct_n`` (Li et al., 2016): distinct n-grams / all n-grams, pooled over all continuations (n = 1..4).
* ``seq_rep_4`` (Welleck et al., 2020): per continuation, 1 - distinct 4-grams / all 4-grams; averaged.
* ``rep_16``: fraction of words that already occurred among the 16 preceding words of the same continuation.

:func:`sample_continuations` draws continuations from a causal LM by ancestral sampling (temperature 1, no top-k or
top-p truncation), so they reflect the distribution the loss trained, not a decoding heuristic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["distinct_n", "generation_quality", "rep_l", "sample_continuations", "seq_rep_n"]


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled over ``texts`` (NaN when there is no n-gram)."""
    grams = [g for text in texts for g in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def seq_rep_n(texts: Sequence[str], n: int = 4) -> float:
    """Mean over texts with at least one n-gram of ``1 - distinct n-grams / n-grams`` (0: no repeated n-gram)."""
    values = []
    for text in texts:
        grams = _ngrams(text.split(), n)
        if grams:
            values.append(1.0 - len(set(grams)) / len(grams))
    return sum(values) / len(values) if values else float("nan")


def rep_l(texts: Sequence[str], window: int = 16) -> float:
    """Fraction of words equal to one of the ``window`` words before them in the same text (pooled)."""
    repeated = total = 0
    for text in texts:
        words = text.split()
        for i, word in enumerate(words[1:], 1):
            total += 1
            repeated += word in words[max(0, i - window) : i]
    return repeated / total if total else float("nan")


def generation_quality(texts: Sequence[str]) -> dict[str, float]:
    """``distinct_1..4``, ``seq_rep_4``, ``rep_16`` and the mean length in words of ``texts``."""
    metrics = {f"distinct_{n}": distinct_n(texts, n) for n in range(1, 5)}
    metrics["seq_rep_4"] = seq_rep_n(texts, 4)
    metrics["rep_16"] = rep_l(texts, 16)
    metrics["words"] = sum(len(t.split()) for t in texts) / len(texts) if texts else float("nan")
    return metrics


def sample_continuations(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int | None,
    seed: int,
    batch_size: int = 32,
) -> list[list[int]]:
    """Token ids sampled after each prompt (ancestral sampling, temperature 1), cut at the first eos.

    Prompts of one batch must have the same length (no padding is used): blocks of the evaluation set cut at a fixed
    length are.
    """
    import torch

    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    out: list[list[int]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = torch.tensor([list(p) for p in prompts[start : start + batch_size]], device=device)
                generated = model.generate(
                    input_ids=batch,
                    attention_mask=torch.ones_like(batch),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos_token_id,
                    pad_token_id=pad_token_id if pad_token_id is not None else eos_token_id,
                )
                for row in generated[:, batch.shape[1] :].tolist():
                    if eos_token_id is not None and eos_token_id in row:
                        row = row[: row.index(eos_token_id)]
                    out.append(row)
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return out


def lm_generation_report(
    model: Any,
    tokenizer: Any,
    eval_dataset: Any,
    *,
    seed: int,
    num_prompts: int = 64,
    prompt_tokens: int = 32,
    new_tokens: int = 64,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Sample continuations of held-out prompts and score them beside the human continuations.

    The prompts are the first ``prompt_tokens`` tokens of the first ``num_prompts`` evaluation blocks (which are
    never trained on); the human continuation is the next ``new_tokens`` tokens of the same block. Returns metrics
    ``gen_<name>`` (model samples) and ``ref_<name>`` (human text) from :func:`generation_quality`, and the samples.
    """
    blocks = [list(row) for row in eval_dataset[: min(num_prompts, len(eval_dataset))]["input_ids"]]
    blocks = [b for b in blocks if len(b) >= prompt_tokens + 1]
    if not blocks:
        return {}, []
    prompts = [b[:prompt_tokens] for b in blocks]
    references = [b[prompt_tokens : prompt_tokens + new_tokens] for b in blocks]
    eos = tokenizer.eos_token_id
    sampled = sample_continuations(model, prompts, max_new_tokens=new_tokens, eos_token_id=eos,
                                   pad_token_id=tokenizer.pad_token_id, seed=seed)  # fmt: skip
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    texts = [decode(ids) for ids in sampled]
    human = [decode(ids[: ids.index(eos)] if eos in ids else ids) for ids in references]
    metrics = {f"gen_{k}": v for k, v in generation_quality(texts).items()}
    metrics.update({f"ref_{k}": v for k, v in generation_quality(human).items()})
    samples = [{"prompt": decode(p), "sample": t, "human": h} for p, t, h in zip(prompts, texts, human, strict=True)]
    return metrics, samples
