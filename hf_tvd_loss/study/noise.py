"""Label noise for robustness studies: random substitution of training target tokens (``tokens``), or whole
references given to the wrong example (``swap``: a summary of another document, a translation of another verse)."""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["NOISE_KINDS", "noisy_labels", "swapped_references"]

NOISE_KINDS = ("tokens", "swap")


def noisy_labels(
    labels: Sequence[int],
    rate: float,
    vocab_size: int,
    rng: random.Random,
    *,
    protected: frozenset[int] = frozenset(),
    ignore_index: int = -100,
) -> list[int]:
    """Replace each scored target token, with probability ``rate``, by a uniformly drawn other token.

    Args:
        labels: one example's target ids; ``ignore_index`` entries (prompt, padding) are kept.
        rate: substitution probability in [0, 1].
        vocab_size: draw replacements from ``[0, vocab_size)``.
        rng: the random source (seed it per example for reproducible, order-independent noise).
        protected: ids never replaced nor drawn (special tokens such as EOS/PAD), so sequence structure stays.

    Returns:
        The noisy copy of ``labels``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must be in [0, 1], got {rate!r}")
    if vocab_size - len(protected) < 2:
        raise ValueError(f"vocabulary of {vocab_size} tokens is too small for label noise")
    out = list(labels)
    if rate == 0.0:
        return out
    for i, token in enumerate(out):
        if token == ignore_index or token in protected or rng.random() >= rate:
            continue
        while True:
            replacement = rng.randrange(vocab_size)
            if replacement != token and replacement not in protected:
                break
        out[i] = replacement
    return out


def swapped_references(num_examples: int, rate: float, rng: random.Random) -> list[int]:
    """Which example's reference each example trains on: ``round(rate * num_examples)`` examples, drawn at random,
    get the reference of another drawn example (a random cycle through them, so none keeps its own); the rest keep
    theirs. Returns ``source[i]``, the index whose reference example ``i`` gets.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"reference-swap rate must be in [0, 1], got {rate!r}")
    source = list(range(num_examples))
    chosen = rng.sample(source, round(rate * num_examples))
    if len(chosen) < 2:
        if chosen:
            raise ValueError(f"a reference-swap rate of {rate:g} on {num_examples} examples swaps one example with "
                             "nothing: use more examples or a higher rate")  # fmt: skip
        return source
    for position, index in enumerate(chosen):
        source[index] = chosen[(position + 1) % len(chosen)]
    return source
