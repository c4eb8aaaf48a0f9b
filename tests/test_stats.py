"""Paired intervals (hf_tvd_loss.study.stats), per-example records and generation metrics on known cases; all fast."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from full_logits import calibration_sums

from hf_tvd_loss.study.generation_metrics import distinct_n, generation_quality, rep_l, seq_rep_n
from hf_tvd_loss.study.per_example import per_example_token_stats
from hf_tvd_loss.study.stats import (
    metric_from_examples,
    paired_bootstrap,
    paired_comparisons,
    paired_t_interval,
    student_t_cdf,
    student_t_quantile,
)
from hf_tvd_loss.tasks.metrics import bleu_scores, calibration_from_sums


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (4, 2.7764451), (9, 2.2621572), (30, 2.0422725)],
)
def test_t_quantile_matches_tables(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_cdf_symmetry_and_cauchy():
    # df = 1 is the Cauchy distribution: P(T ≤ 1) = 3/4
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)
    assert student_t_cdf(0.0, 5) == pytest.approx(0.5)
    assert student_t_cdf(-2.0, 7) == pytest.approx(1 - student_t_cdf(2.0, 7), abs=1e-12)
    assert student_t_quantile(0.025, 4) == pytest.approx(-2.7764451, abs=1e-6)


def test_paired_t_interval_known_case():
    # differences 1, 2, 3: mean 2, sd 1, half-width t_{0.975,2} / sqrt(3) = 2.48414
    interval = paired_t_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert interval.mean == pytest.approx(2.0)
    assert interval.low == pytest.approx(2.0 - 4.3026527 / math.sqrt(3), abs=1e-6)
    assert interval.high == pytest.approx(2.0 + 4.3026527 / math.sqrt(3), abs=1e-6)
    assert interval.n == 3 and not interval.excludes_zero  # 3 seeds: [-0.48, 4.48] still holds 0
    # pairing matters: a large shared seed effect cancels
    paired = paired_t_interval([100.0, 0.0, 50.0], [99.0, -1.0, 49.2])
    assert paired.excludes_zero
    assert not paired_t_interval([1.0, -1.0], [0.0, 0.0]).excludes_zero


def test_paired_t_interval_degenerate():
    one = paired_t_interval([3.0], [1.0])
    assert one.mean == 2.0 and math.isnan(one.low) and not one.excludes_zero
    assert paired_t_interval([float("nan"), 2.0, 3.0], [0.0, 1.0, 1.0]).n == 2
    with pytest.raises(ValueError):
        paired_t_interval([1.0], [1.0, 2.0])


def _nll_records(values: list[float]) -> dict:
    return {"nll": [[v, 1.0] for v in values]}


def test_bootstrap_identical_runs_and_constant_shift():
    base = _nll_records([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    same = paired_bootstrap("eval_nll", [base], [base], resamples=200)
    assert same.mean == 0.0 and same.low == 0.0 and same.high == 0.0
    shifted = _nll_records([v + 0.25 for v in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)])
    shift = paired_bootstrap("eval_nll", [shifted], [base], resamples=200)
    # every resample sees the same per-example shift: a point interval at +0.25
    assert shift.mean == pytest.approx(0.25) and shift.low == pytest.approx(0.25) and shift.high == pytest.approx(0.25)
    assert shift.excludes_zero


def test_bootstrap_noise_interval_contains_mean_and_is_reproducible():
    a = _nll_records([1.0, 3.0, 2.0, 5.0, 1.0, 2.0, 4.0, 3.0])
    b = _nll_records([2.0, 1.0, 3.0, 2.0, 2.0, 3.0, 1.0, 4.0])
    first = paired_bootstrap("eval_nll", [a, b], [b, a], resamples=300, seed=3)
    assert first.mean == pytest.approx(0.0)
    assert first.low <= 0.0 <= first.high and first.n == 2
    assert paired_bootstrap("eval_nll", [a, b], [b, a], resamples=300, seed=3) == first
    with pytest.raises(ValueError, match="different numbers"):
        paired_bootstrap("eval_nll", [a], [_nll_records([1.0])])


def test_corpus_bleu_from_per_sentence_statistics():
    from sacrebleu.metrics import BLEU, CHRF

    hyps = ["the cat sat on the mat", "a dog runs in the park today", "hello world"]
    refs = ["the cat sat on a mat", "the dog runs in the park", "hello there world"]
    record = {
        "bleu_stats": [list(map(float, s)) for s in BLEU()._extract_corpus_statistics(hyps, [refs])],
        "chrf_stats": [list(map(float, s)) for s in CHRF()._extract_corpus_statistics(hyps, [refs])],
    }
    expected = bleu_scores(hyps, refs)
    assert metric_from_examples("eval_bleu", record) == pytest.approx(expected["bleu"], abs=1e-9)
    assert metric_from_examples("eval_chrf", record) == pytest.approx(expected["chrf"], abs=1e-9)


def test_per_example_token_stats_add_up_to_batch_metrics():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[1, 4:] = -100
    nll, calibration = per_example_token_stats(logits, labels, shift=True)
    shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    mask = shifted_labels != -100
    expected_nll = torch.nn.functional.cross_entropy(shifted_logits[mask], shifted_labels[mask], reduction="sum")
    assert sum(row[0] for row in nll) == pytest.approx(float(expected_nll), rel=1e-6)
    assert [row[1] for row in nll] == [6.0, 3.0, 6.0]
    record = {"nll": nll, "calibration": calibration}
    batch = calibration_from_sums(calibration_sums(logits, labels, shift=True))
    for name, metric in (("ece", "eval_ece"), ("confidence", "eval_confidence"), ("accuracy", "eval_token_accuracy")):
        assert metric_from_examples(metric, record) == pytest.approx(batch[name], abs=1e-9)


def _result(loss: str, seed: int, noise: float, bleu: float, per_example: dict | None = None) -> SimpleNamespace:
    spec = SimpleNamespace(loss=SimpleNamespace(name=loss), seed=seed, noise=noise)
    return SimpleNamespace(spec=spec, metrics={"eval_bleu": bleu}, per_example=per_example)


def test_paired_comparisons_pairs_by_seed_and_noise():
    results = [
        _result("ce", 0, 0.0, 30.0),
        _result("ce", 1, 0.0, 40.0),
        _result("ce", 2, 0.0, 50.0),
        _result("g", 0, 0.0, 31.0),
        _result("g", 1, 0.0, 41.5),
        _result("g", 2, 0.0, 50.5),
        _result("g", 3, 0.0, 99.0),  # no ce run with seed 3: not paired
        _result("ce", 0, 0.2, 20.0),
        _result("g", 0, 0.2, 25.0),
    ]
    comparisons = paired_comparisons(results, ["ce", "missing"], ["eval_bleu"])
    assert [(c.loss, c.noise, c.seeds) for c in comparisons] == [("g", 0.0, [0, 1, 2]), ("g", 0.2, [0])]
    clean = comparisons[0].by_seeds["eval_bleu"]
    assert clean.mean == pytest.approx(1.0) and clean.n == 3
    assert comparisons[0].by_examples == {}  # no per-example records


def test_generation_metrics_known_cases():
    texts = ["a b a b a b", "c d e f"]
    # unigrams: a b a b a b c d e f → 6 distinct of 10
    assert distinct_n(texts, 1) == pytest.approx(6 / 10)
    # 4-grams: "a b a b", "b a b a", "a b a b" (text 1: 2 distinct of 3) and "c d e f" (1 of 1)
    assert seq_rep_n(texts, 4) == pytest.approx(((1 - 2 / 3) + 0.0) / 2)
    # words after the first: text 1 has 5, of which 4 repeat an earlier word; text 2 has 3, none repeat
    assert rep_l(texts, 16) == pytest.approx(4 / 8)
    assert rep_l(["a b c a"], 2) == 0.0  # "a" is 3 words back, outside a window of 2
    quality = generation_quality(texts)
    assert quality["words"] == 5.0 and set(quality) >= {"distinct_1", "distinct_4", "seq_rep_4", "rep_16"}
    assert math.isnan(distinct_n(["a"], 2))


def test_lm_generation_report_on_a_tiny_model():
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_tvd_loss.study.generation_metrics import lm_generation_report

    class WordTokenizer:
        eos_token_id = 0
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i == 0))

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    blocks = Dataset.from_dict({"input_ids": [[1 + (i * 7 + j) % 29 for j in range(48)] for i in range(5)]})
    metrics, samples = lm_generation_report(model, WordTokenizer(), blocks, seed=3, num_prompts=4, prompt_tokens=8,
                                            new_tokens=12)  # fmt: skip
    assert len(samples) == 4 and all(len(s["human"].split()) == 12 for s in samples)
    assert {"gen_distinct_2", "gen_seq_rep_4", "gen_rep_16", "ref_distinct_2"} <= set(metrics)
    assert 0.0 < metrics["gen_words"] <= 12
    again, _ = lm_generation_report(
        model, WordTokenizer(), blocks, seed=3, num_prompts=4, prompt_tokens=8, new_tokens=12
    )
    assert again == metrics  # the sampling is seeded
