"""Label noise for robustness studies: random substitution of training target tokens (``tokens``), whole
references given to the wrong example (``swap``: a summary of another document, a translation of another verse),
or, for classification, class labels flipped to another class (``symmetric``: a uniformly drawn other class;
``asymmetric``: a fixed confusion map, class c → flip_map[c])."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

__all__ = [
    "CLASS_NOISE_KINDS",
    "NOISE_KINDS",
    "asymmetric_class_noise",
    "next_class_flip_map",
    "noisy_labels",
    "swapped_references",
    "symmetric_class_noise",
]

# Noise on generated targets (token-level tasks) and on class labels (classification tasks).
TOKEN_NOISE_KINDS = ("tokens", "swap")
CLASS_NOISE_KINDS = ("symmetric", "asymmetric")
NOISE_KINDS = TOKEN_NOISE_KINDS + CLASS_NOISE_KINDS


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


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")


def _check_num_classes(num_classes: object) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _check_class(name: str, value: object, num_classes: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer class index, got {value!r} ({type(value).__name__})")
    if value < 0 or (num_classes is not None and value >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{name} must be a class index {bound}, got {value!r}")


def symmetric_class_noise(
    labels: Sequence[int], rate: float, num_classes: int, rng: random.Random
) -> tuple[list[int], list[bool]]:
    """Symmetric (uniform) label noise: each label, with probability ``rate``, is replaced by a class drawn
    uniformly among the ``num_classes - 1`` other classes (never by itself, so ``rate`` is the flip rate).

    Args:
        labels: class indices in ``[0, num_classes)``.
        rate: flip probability in [0, 1].
        num_classes: the number of classes, at least 2.
        rng: the random source; one ``rng.random()`` per label, and one ``rng.randrange`` per flipped label (seed
            it per example, as :func:`~hf_tvd_loss.study.compare.apply_class_noise` does, for noise that does not
            depend on the order of processing).

    Returns:
        ``(noisy_labels, flipped)``: the noisy copy and, per label, whether it was flipped.
    """
    _check_rate(rate)
    _check_num_classes(num_classes)
    noisy, flipped = [], []
    for i, label in enumerate(labels):
        _check_class(f"labels[{i}]", label, num_classes)
        flip = rng.random() < rate
        if flip:
            other = rng.randrange(num_classes - 1)  # the other classes, without a rejection loop
            label = other + (other >= label)
        noisy.append(label)
        flipped.append(flip)
    return noisy, flipped


def asymmetric_class_noise(
    labels: Sequence[int],
    rate: float,
    flip_map: Mapping[int, int],
    rng: random.Random,
    *,
    num_classes: int | None = None,
) -> tuple[list[int], list[bool]]:
    """Asymmetric (class-conditional) label noise: each label whose class is a key of ``flip_map`` is replaced, with
    probability ``rate``, by ``flip_map[label]``; the other labels are kept (and draw nothing from ``rng``).

    ``flip_map`` maps a class to a different class (e.g. the confusions of Patrini et al. 2017 on CIFAR-10, truck →
    automobile, or :func:`next_class_flip_map` where the data have no natural confusion). With ``num_classes``,
    the labels and both sides of the map must lie in ``[0, num_classes)``; without it, be non-negative. Returns
    ``(noisy_labels, flipped)`` as :func:`symmetric_class_noise` does.
    """
    _check_rate(rate)
    if num_classes is not None:
        _check_num_classes(num_classes)
    flip_map = _checked_flip_map(flip_map, num_classes)
    noisy, flipped = [], []
    for i, label in enumerate(labels):
        _check_class(f"labels[{i}]", label, num_classes)
        flip = label in flip_map and rng.random() < rate
        noisy.append(flip_map[label] if flip else label)
        flipped.append(flip)
    return noisy, flipped


def _checked_flip_map(flip_map: Mapping[int, int], num_classes: int | None = None) -> dict[int, int]:
    if not isinstance(flip_map, Mapping):
        raise ValueError(f"flip_map must be a dict class -> class, got {type(flip_map).__name__}")
    for source, target in flip_map.items():
        _check_class(f"flip_map key {source!r}", source, num_classes)
        _check_class(f"flip_map[{source!r}]", target, num_classes)
        if source == target:
            raise ValueError(f"flip_map maps class {source} to itself: a flip must change the class")
    return dict(flip_map)


def next_class_flip_map(num_classes: int) -> dict[int, int]:
    """The default confusion map for asymmetric noise: class ``c`` → ``(c + 1) mod C``.

    A common convention for datasets without a natural confusion map (e.g. the "pair flipping" of Han et al.,
    Co-teaching, 2018): every class is flipped into one fixed neighbour, so the noise is class-dependent but not
    uniform, and the clean class stays the most frequent label of each class for rates below 0.5. Where the data
    do have confusable classes (positive ↔ negative, truck → automobile), pass that map instead.
    """
    _check_num_classes(num_classes)
    return {c: (c + 1) % num_classes for c in range(num_classes)}
