"""Loss-comparison study plumbing: loss names, run plans, resumable runs, the report, label noise."""

from __future__ import annotations

import json
import os
import random

import pytest

from hf_tvd_loss import TVDArguments
from hf_tvd_loss.compare import parse_loss, plan_runs, run_study, write_report
from hf_tvd_loss.noise import noisy_labels


def test_loss_names_map_to_valid_tvd_arguments():
    from transformers import HfArgumentParser

    expected = {
        "ce": dict(gamma=0.0),
        "ls0.2": dict(gamma=0.0, label_smoothing=0.2),
        "focal": dict(loss_type="focal", focal_gamma=2.0),
        "gamma1e-7": dict(gamma=1e-7, min_weight=0.0),
        "gamma0.1b0.3": dict(gamma=0.1, min_weight=0.3),
        "dft": dict(gamma=1.0),
        "sched0.8": dict(gamma=0.8, gamma_schedule="linear", gamma_start=0.0),
        "gamma0.8,label_smoothing=0.1": dict(gamma=0.8, label_smoothing=0.1),
    }
    for name, fields in expected.items():
        (args,) = HfArgumentParser(TVDArguments).parse_args_into_dataclasses(parse_loss(name).argv())
        for key, value in fields.items():
            assert getattr(args, key) == pytest.approx(value) if isinstance(value, float) else value, (name, key)
    for bad in ["mse", "gamma", "ls0.1,oops", "gammax"]:
        with pytest.raises(ValueError, match="loss"):
            parse_loss(bad)


def test_plan_and_resumable_study(tmp_path):
    losses = [parse_loss(name) for name in ["ce", "gamma0.8", "dft"]]
    runs = plan_runs(losses, seeds=[0, 1], noise_rates=[0.0, 0.3], noise_losses=["ce", "gamma0.8"])
    assert len(runs) == 3 * 2 + 2 * 2
    calls = []

    def runner(spec, run_dir):
        calls.append(spec.name)
        rng = random.Random(spec.name)
        metrics = {"eval_bleu": 40 + rng.random(), "eval_nll": 2.0, "eval_perplexity": 7.4, "eval_ece": 0.05,
                   "eval_confidence": 0.6, "eval_accuracy": 0.55}  # fmt: skip
        history = [{"step": s, "nll": 3.0 / s} for s in range(1, 5)]
        return {"metrics": metrics, "history": history, "calibration_bins": [[1.0] * 10, [0.5] * 10, [0.4] * 10]}

    results = run_study(runs, str(tmp_path), runner, log=lambda _: None)
    assert len(calls) == 10 and len(results) == 10
    again = run_study(runs, str(tmp_path), runner, log=lambda _: None)  # finished runs are not redone
    assert len(calls) == 10 and [r.metrics for r in again] == [r.metrics for r in results]

    path = write_report(results, str(tmp_path), task_metric="eval_bleu", task_metric_label="BLEU",
                        higher_is_better=True, command="cmd", title="Study")  # fmt: skip
    with open(path) as f:
        text = f.read()
    assert "| gamma0.8 | 0.3 | 2 |" in text and "BLEU" in text and "Best BLEU" in text
    for png in ["learning_curves.png", "reliability_diagrams.png", "metric_vs_gamma.png", "metric_vs_noise.png"]:
        assert os.path.getsize(tmp_path / png) > 1000, png
        assert f"]({png})" in text
    with open(tmp_path / "results.json") as f:
        assert len(json.load(f)) == 10


def test_noisy_labels():
    labels = [-100, -100] + list(range(3, 203)) + [2]
    rng = random.Random(0)
    noisy = noisy_labels(labels, 0.3, 300, rng, protected=frozenset({0, 1, 2}))
    changed = [i for i, (a, b) in enumerate(zip(labels, noisy, strict=True)) if a != b]
    assert 0.2 * 200 < len(changed) < 0.4 * 200
    assert noisy[:2] == [-100, -100] and noisy[-1] == 2  # ignored and protected positions stay
    assert all(noisy[i] not in (0, 1, 2) for i in changed)
    assert noisy_labels(labels, 0.0, 300, rng) == labels
    assert noisy_labels(labels, 0.5, 300, random.Random(7)) == noisy_labels(labels, 0.5, 300, random.Random(7))
    with pytest.raises(ValueError, match="rate must be in"):
        noisy_labels(labels, 1.5, 300, rng)
