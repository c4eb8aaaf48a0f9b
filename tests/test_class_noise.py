"""Label noise on class labels (study.noise: symmetric / asymmetric flips; study.compare.apply_class_noise)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from hf_tvd_loss.study.noise import (
    CLASS_NOISE_KINDS,
    NOISE_KINDS,
    asymmetric_class_noise,
    next_class_flip_map,
    symmetric_class_noise,
)


def _labels(n, num_classes, seed=0):
    rng = random.Random(seed)
    return [rng.randrange(num_classes) for _ in range(n)]


def _per_example(fn, labels, seed):
    """Flip each label with its own stream, as the study does."""
    out, flips = [], []
    for i, label in enumerate(labels):
        (noisy,), (flipped,) = fn([label], random.Random(f"class-noise-{seed}-{i}"))
        out.append(noisy)
        flips.append(flipped)
    return out, flips


def _within_binomial(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_kinds():
    assert set(CLASS_NOISE_KINDS) == {"symmetric", "asymmetric"} and {"tokens", "swap"} < set(NOISE_KINDS)
    assert set(CLASS_NOISE_KINDS) < set(NOISE_KINDS)


def test_rate_zero_keeps_every_label_and_rate_one_flips_every_label_to_another_class():
    labels = _labels(500, 5)
    assert symmetric_class_noise(labels, 0.0, 5, random.Random(0)) == (labels, [False] * 500)
    noisy, flipped = symmetric_class_noise(labels, 1.0, 5, random.Random(0))
    assert flipped == [True] * 500 and all(a != b for a, b in zip(labels, noisy))
    assert all(0 <= y < 5 for y in noisy)

    flip_map = {0: 3, 2: 1}  # classes 1, 3, 4 are not mapped: never flipped
    assert asymmetric_class_noise(labels, 0.0, flip_map, random.Random(0)) == (labels, [False] * 500)
    noisy, flipped = asymmetric_class_noise(labels, 1.0, flip_map, random.Random(0))
    assert flipped == [y in flip_map for y in labels]
    assert noisy == [flip_map.get(y, y) for y in labels]


def test_empirical_flip_rate_is_within_a_binomial_bound_and_flips_are_uniform_over_the_other_classes():
    n, rate, classes = 20000, 0.3, 4
    labels = _labels(n, classes, seed=1)
    noisy, flipped = _per_example(lambda y, rng: symmetric_class_noise(y, rate, classes, rng), labels, seed=7)
    assert _within_binomial(sum(flipped), n, rate)  # 5 standard deviations: ±324 of 6000
    assert all((a != b) == f for a, b, f in zip(labels, noisy, flipped))  # flipped exactly when changed
    # each flipped label lands on one of the 3 other classes with probability 1/3
    for source in range(classes):
        targets = Counter(b for a, b, f in zip(labels, noisy, flipped) if f and a == source)
        assert source not in targets and len(targets) == classes - 1
        total = sum(targets.values())
        assert all(_within_binomial(count, total, 1 / (classes - 1)) for count in targets.values()), targets

    flip_map = next_class_flip_map(classes)
    noisy, flipped = _per_example(lambda y, rng: asymmetric_class_noise(y, rate, flip_map, rng), labels, seed=7)
    assert _within_binomial(sum(flipped), n, rate)
    assert all(b == ((a + 1) % classes if f else a) for a, b, f in zip(labels, noisy, flipped))


def test_same_seed_same_noise_other_seed_other_noise():
    labels = _labels(300, 6)

    def run(seed, kind):
        if kind == "symmetric":
            return _per_example(lambda y, rng: symmetric_class_noise(y, 0.4, 6, rng), labels, seed)
        return _per_example(lambda y, rng: asymmetric_class_noise(y, 0.4, next_class_flip_map(6), rng), labels, seed)

    for kind in CLASS_NOISE_KINDS:
        assert run(3, kind) == run(3, kind)
        assert run(3, kind) != run(4, kind)
    # every class mapped: both kinds flip the same examples at the same seed (the first draw decides)
    assert run(3, "symmetric")[1] == run(3, "asymmetric")[1]
    # one stream for a whole list is reproducible too
    assert symmetric_class_noise(labels, 0.5, 6, random.Random(9)) == symmetric_class_noise(
        labels, 0.5, 6, random.Random(9)
    )


def test_next_class_flip_map():
    assert next_class_flip_map(2) == {0: 1, 1: 0}
    assert next_class_flip_map(4) == {0: 1, 1: 2, 2: 3, 3: 0}


@pytest.mark.parametrize("rate", [-0.1, 1.01, float("nan"), True, "0.1", None])
def test_bad_rate_is_refused(rate):
    with pytest.raises(ValueError, match="rate must be a number in"):
        symmetric_class_noise([0, 1], rate, 2, random.Random(0))
    with pytest.raises(ValueError, match="rate must be a number in"):
        asymmetric_class_noise([0, 1], rate, {0: 1}, random.Random(0))


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True])
def test_bad_num_classes_is_refused(num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        symmetric_class_noise([0], 0.5, num_classes, random.Random(0))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        next_class_flip_map(num_classes)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        asymmetric_class_noise([0], 0.5, {0: 1}, random.Random(0), num_classes=num_classes)


@pytest.mark.parametrize(
    "flip_map,num_classes,match",
    [
        ({1: 1}, None, "flip_map maps class 1 to itself"),
        ({0: 1, 2: 2}, 3, "flip_map maps class 2 to itself"),
        ({0: 3}, 3, r"flip_map\[0\] must be a class index \[0, 3\), got 3"),
        ({3: 0}, 3, r"flip_map key 3 must be a class index \[0, 3\)"),
        ({0: -1}, None, r"flip_map\[0\] must be a class index >= 0"),
        ({0: 1.0}, None, r"flip_map\[0\] must be an integer class index"),
        ([(0, 1)], None, "flip_map must be a dict"),
    ],
)
def test_bad_flip_map_is_refused(flip_map, num_classes, match):
    with pytest.raises(ValueError, match=match):
        asymmetric_class_noise([0, 1, 2], 0.5, flip_map, random.Random(0), num_classes=num_classes)


def test_labels_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"labels\[1\] must be a class index \[0, 3\), got 3"):
        symmetric_class_noise([0, 3], 0.5, 3, random.Random(0))
    with pytest.raises(ValueError, match=r"labels\[0\] must be a class index >= 0, got -100"):
        asymmetric_class_noise([-100], 0.5, {0: 1}, random.Random(0))
    with pytest.raises(ValueError, match=r"labels\[0\] must be an integer class index"):
        symmetric_class_noise([0.0], 0.5, 3, random.Random(0))


def _dataset(n=200, classes=3):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=[f"c{i}" for i in range(classes)])})
    labels = _labels(n, classes, seed=2)
    return Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": labels}, features=features), labels


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_apply_class_noise_replaces_the_label_and_records_the_clean_one(kind):
    from hf_tvd_loss.study.compare import apply_class_noise

    dataset, labels = _dataset()
    noisy = apply_class_noise(dataset, kind, 0.4, 3, seed=5)
    assert noisy.column_names == ["text", "label", "clean_label", "label_flipped"]
    assert noisy["clean_label"] == labels and noisy["text"] == dataset["text"]
    assert noisy.features["label"] == noisy.features["clean_label"] == dataset.features["label"]  # ClassLabel kept
    assert noisy.features["label_flipped"].dtype == "bool"
    flips = noisy["label_flipped"]
    assert [a != b for a, b in zip(noisy["label"], labels)] == flips and 0 < sum(flips) < len(flips)
    if kind == "symmetric":
        want = _per_example(lambda y, rng: symmetric_class_noise(y, 0.4, 3, rng), labels, seed=5)
    else:
        want = _per_example(lambda y, rng: asymmetric_class_noise(y, 0.4, {0: 1, 1: 2, 2: 0}, rng), labels, seed=5)
    assert (noisy["label"], flips) == want  # the per-example streams (seed, index)
    # the same at the same seed; another seed differs
    again = apply_class_noise(dataset, kind, 0.4, 3, seed=5)
    assert again["label"] == noisy["label"]
    assert apply_class_noise(dataset, kind, 0.4, 3, seed=6)["label"] != noisy["label"]
    assert apply_class_noise(dataset, kind, 0.0, 3, seed=5)["label_flipped"] == [False] * len(labels)


def test_apply_class_noise_refuses_bad_input_naming_it():
    from hf_tvd_loss.study.compare import apply_class_noise

    dataset, _ = _dataset(10)
    with pytest.raises(ValueError, match="kind must be one of symmetric, asymmetric, got 'tokens'"):
        apply_class_noise(dataset, "tokens", 0.1, 3, seed=0)
    with pytest.raises(ValueError, match="label_column 'labels' is not a column"):
        apply_class_noise(dataset, "symmetric", 0.1, 3, seed=0, label_column="labels")
    with pytest.raises(ValueError, match="rate must be a number"):
        apply_class_noise(dataset, "symmetric", 2.0, 3, seed=0)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        apply_class_noise(dataset, "asymmetric", 0.1, 1, seed=0)
    with pytest.raises(ValueError, match="flip_map maps class 0 to itself"):
        apply_class_noise(dataset, "asymmetric", 0.1, 3, seed=0, flip_map={0: 0})
    with pytest.raises(ValueError, match="flip_map is used by kind 'asymmetric' only"):
        apply_class_noise(dataset, "symmetric", 0.1, 3, seed=0, flip_map={0: 1})
    with pytest.raises(ValueError, match=r"labels\[0\] must be a class index \[0, 2\)"):
        apply_class_noise(dataset.map(lambda e: {"label": 2}), "symmetric", 0.1, 2, seed=0)
    twice = apply_class_noise(dataset, "symmetric", 0.1, 3, seed=0)
    with pytest.raises(ValueError, match="already has clean_label, label_flipped"):
        apply_class_noise(twice, "symmetric", 0.1, 3, seed=0)


def test_class_noise_is_refused_for_generation_tasks():
    from hf_tvd_loss.study.compare import task_runner

    with pytest.raises(ValueError, match="noise_kind symmetric flips class labels"):
        task_runner("translation", [], noise_kind="symmetric")
