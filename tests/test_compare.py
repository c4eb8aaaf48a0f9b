"""Loss-comparison study plumbing: loss names, run plans, resumable runs, the report, label noise."""

from __future__ import annotations

import json
import os
import random
import re

import pytest

from hf_tvd_loss import TVDArguments
from hf_tvd_loss.study.compare import parse_loss, plan_runs, run_study, write_report
from hf_tvd_loss.study.noise import noisy_labels, swapped_references


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
    fewer_clean = plan_runs(losses, seeds=[0, 1], noise_rates=[0.0, 0.3], noise_losses=["ce"], clean_seeds=[0])
    assert sorted((r.loss.name, r.seed, r.noise) for r in fewer_clean) == sorted(
        [("ce", 0, 0.0), ("gamma0.8", 0, 0.0), ("dft", 0, 0.0), ("ce", 0, 0.3), ("ce", 1, 0.3)]
    )
    only_noisy = plan_runs(losses, seeds=[0], noise_rates=[0.0, 0.3], noise_losses=None, clean_seeds=[])
    assert [(r.loss.name, r.noise) for r in only_noisy] == [("ce", 0.3), ("gamma0.8", 0.3), ("dft", 0.3)]
    calls = []

    def runner(spec, run_dir):
        calls.append(spec.name)
        rng = random.Random(spec.name)
        metrics = {"eval_bleu": 40 + rng.random(), "eval_chrf": 60 + rng.random(), "eval_nll": 2.0, "eval_perplexity": 7.4, "eval_ece": 0.05,
                   "eval_confidence": 0.6, "eval_token_accuracy": 0.55}  # fmt: skip
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
    assert "| loss | label noise | seeds | BLEU | chrF | NLL |" in text  # chrF beside BLEU when the runs have it
    assert "Δ chrF (seeds)" in text
    for png in ["learning_curves.png", "reliability_diagrams.png", "metric_vs_gamma.png", "metric_vs_noise.png"]:
        assert os.path.getsize(tmp_path / png) > 1000, png
        assert f"]({png})" in text
    with open(tmp_path / "results.json") as f:
        assert len(json.load(f)) == 10
    # every loss against cross-entropy, paired by seed, with 95 % intervals (2 seeds: over seeds only, no records)
    assert "## Differences from `ce` (paired 95 % intervals)" in text and "](differences.png)" in text
    assert "| gamma0.8 | 0.3 | 2 |" in text.split("## Differences from")[1]
    with open(tmp_path / "comparisons.json") as f:
        comparisons = {(c["loss"], c["noise"]): c for c in json.load(f)}
    assert set(comparisons) == {("gamma0.8", 0.0), ("dft", 0.0), ("gamma0.8", 0.3)}
    assert comparisons[("dft", 0.0)]["by_seeds"]["eval_bleu"]["n"] == 2
    assert comparisons[("dft", 0.0)]["by_seeds"]["eval_chrf"]["n"] == 2
    assert comparisons[("dft", 0.0)]["by_examples"] == {}
    # a study without clean runs draws its curves and reliability diagrams at its lowest noise rate, and says so
    noisy = write_report([r for r in results if r.spec.noise > 0], str(tmp_path / "noisy"), task_metric="eval_bleu",
                         task_metric_label="BLEU", higher_is_better=True, command="cmd", title="Study")  # fmt: skip
    with open(noisy) as f:
        text = f.read()
    assert "![Reliability diagrams (label noise 0.3)](reliability_diagrams.png)" in text
    # language modelling: the task metric is the perplexity column, listed once
    lm = write_report(results, str(tmp_path / "lm"), task_metric="eval_perplexity", task_metric_label="perplexity",
                      higher_is_better=False, command="cmd", title="Study")  # fmt: skip
    with open(lm) as f:
        header = next(line for line in f if line.startswith("| loss |"))
    assert header.count("perplexity") == 1 and "NLL" in header


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


def test_swapped_references_move_that_fraction_and_none_keeps_its_own():
    source = swapped_references(100, 0.3, random.Random(0))
    moved = [i for i, j in enumerate(source) if i != j]
    assert len(moved) == 30 and sorted(source) == list(range(100))  # a permutation: every reference used once
    assert source == swapped_references(100, 0.3, random.Random(0))
    assert swapped_references(10, 0.0, random.Random(0)) == list(range(10))
    with pytest.raises(ValueError, match="swaps one example with nothing"):
        swapped_references(3, 0.3, random.Random(0))
    with pytest.raises(ValueError, match="rate must be in"):
        swapped_references(10, -0.1, random.Random(0))


def test_reference_swap_keeps_each_prompt_and_moves_whole_targets():
    from datasets import Dataset

    from hf_tvd_loss.study.compare import apply_reference_swap

    prompts, targets = [[5, 6], [7, 8, 9], [10], [11, 12]], [[20, 2], [21, 22, 2], [23, 24, 25, 2], [26, 2]]
    rows = {"input_ids": [p + t for p, t in zip(prompts, targets, strict=True)],
            "attention_mask": [[1] * (len(p) + len(t)) for p, t in zip(prompts, targets, strict=True)],
            "labels": [[-100] * len(p) + t for p, t in zip(prompts, targets, strict=True)]}  # fmt: skip
    swapped = apply_reference_swap(Dataset.from_dict(rows), 1.0, 3, prompt_target=True)
    source = swapped_references(4, 1.0, random.Random("reference-swap-3"))
    for i, example in enumerate(swapped):
        assert example["input_ids"] == prompts[i] + targets[source[i]] and source[i] != i
        assert example["labels"] == [-100] * len(prompts[i]) + targets[source[i]]
        assert example["attention_mask"] == [1] * len(example["input_ids"])
    seq2seq = apply_reference_swap(Dataset.from_dict({"input_ids": prompts, "labels": targets}), 0.5, 3,
                                   prompt_target=False)  # fmt: skip
    assert seq2seq["input_ids"] == prompts and sorted(map(tuple, seq2seq["labels"])) == sorted(map(tuple, targets))
    assert sum(a != b for a, b in zip(seq2seq["labels"], targets, strict=True)) == 2


def test_swap_noise_is_refused_for_language_modelling():
    from hf_tvd_loss.study.compare import task_runner

    with pytest.raises(ValueError, match="not to language modelling"):
        task_runner("language_modeling", [], noise_kind="swap")
    with pytest.raises(ValueError, match="noise_kind must be one of tokens, swap"):
        task_runner("summarization", [], noise_kind="documents")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARE_CONFIGS = sorted(
    os.path.join(ROOT, "configs", "compare", name) for name in os.listdir(os.path.join(ROOT, "configs", "compare"))
)


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_losses", os.path.join(ROOT, "scripts", "compare_losses.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=os.path.basename)
def test_study_configs_parse(path, monkeypatch):
    """Every shipped study config loads, its losses parse, and every run's options parse with the task's parser."""
    from hf_tvd_loss.study.compare import RunSpec, run_argv
    from hf_tvd_loss.tasks import get_task

    monkeypatch.chdir(ROOT)
    script = _load_script()
    config = script.load_study_config(path)
    losses = [parse_loss(name) for name in config["losses"]]
    # without noise_losses a classification study runs every loss under noise (the others: the default ones listed)
    assert set(config.get("noise_losses", config["losses"])) <= {loss.name for loss in losses}
    task_args = [item for key, value in config["task_args"].items() for item in (f"--{key}", str(value))]
    parser = get_task(config["task"]).build_parser()
    for loss in losses:
        spec = RunSpec(loss, 0, 0.0)
        parsed = parser.parse_args_and_config(run_argv(config["task"], task_args, spec, "/tmp/x"))
        tvd_args = next(a for a in parsed if isinstance(a, TVDArguments))
        assert tvd_args.loss_type in ("gamma_ce", "focal", "gce")


def test_study_config_errors(tmp_path):
    script = _load_script()
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: translation\nlosses: [ce]\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epochs'\]"):
        script.load_study_config(str(bad))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--losses", "ce", "mse", "--report_dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        script.main(["--losses", "ce", "--noise_losses", "dft", "--report_dir", str(tmp_path / "r")])
    assert not os.path.exists(tmp_path / "r")  # refused before anything was written


@pytest.mark.parametrize("line,message", [
    ("seeds: []", r"seeds must be a non-empty list"),  # fell back to seeds 0, 1, 2 without a word
    ("seeds: [0, 0]", r"seeds lists \['0'\] more than once"),  # two runs into one folder, refused mid-study
    ("losses: [ce, ce]", r"losses lists \['ce'\] more than once"),
    ("noise_rates: [0.0, 0.0]", r"noise_rates lists \['0.0'\] more than once"),
])  # fmt: skip
def test_empty_or_repeated_study_lists_are_refused_before_any_run(tmp_path, capsys, line, message):
    script = _load_script()
    config = tmp_path / "study.yaml"
    config.write_text(f"task: translation\n{line}\nreport_dir: {tmp_path / 'r'}\n")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--study_config", str(config)])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "r")


def test_default_corpus_size_is_dropped_beside_the_users_data_files(tmp_path, monkeypatch):
    """The default study sizes the synthetic corpus; options after `--` naming data files drop that size (the task
    would refuse it beside files), and leave it in place otherwise."""
    script = _load_script()
    seen = []

    def stop(task, task_args, **_):
        seen.append(list(task_args))
        raise ValueError("stopped before training")

    monkeypatch.setattr("hf_tvd_loss.study.command.task_runner", stop)  # the script is a front end
    for extra in ([], ["--train_file", str(tmp_path / "t.csv"), "--validation_file", str(tmp_path / "v.csv")]):
        with pytest.raises(SystemExit):
            script.main(["--losses", "ce", "--report_dir", str(tmp_path / "r"), "--", *extra])
    assert "--synthetic_eval_examples" in seen[0]
    assert not [a for a in seen[1] if a.startswith("--synthetic_")], seen[1]
    assert seen[1][-4:] == extra
    assert not os.path.exists(tmp_path / "r")


def test_task_options_the_study_sets_per_run_are_refused(tmp_path, capsys):
    """A loss option, seed or folder given for all runs would be replaced by each run's own: refused, named."""
    script = _load_script()
    for extra, named in ((["--gamma", "0.5"], "--gamma"), (["--seed=3"], "--seed"),
                         (["--output_dir", str(tmp_path / "o")], "--output_dir")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            script.main(["--losses", "ce", "--report_dir", str(tmp_path / "r"), "--", *extra])
        assert exit_info.value.code == 2
        assert f"task options {named} are set by the study for each run" in capsys.readouterr().err
    # an option given twice after `--` is refused by the task parser; one overriding the study's default is not
    with pytest.raises(SystemExit):
        script.main(["--losses", "ce", "--report_dir", str(tmp_path / "r"), "--", "--num_train_epochs", "1",
                     "--num_train_epochs", "2"])  # fmt: skip
    assert "num_train_epochs: --num_train_epochs is given more than once" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # named before any run's process starts
        script.main(["--losses", "ce", "--report_dir", str(tmp_path / "r"), "--", "--num_train_epoch", "1"])
    assert "unknown option(s) --num_train_epoch (did you mean --num_train_epochs?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a baseline must be one of the losses run
        script.main(["--losses", "ce,learning_rate=0.0002", "gamma0.3", "--baselines", "ce", "--report_dir",
                     str(tmp_path / "r")])  # fmt: skip
    assert "baselines ['ce'] are not among the losses" in capsys.readouterr().err
    # the same from a study config that lists its losses; a malformed value is named too
    for baselines, named in (("[ce]", "baselines ['ce'] are not among the losses"),
                             ("ce", "baselines must be a list of loss names, got 'ce'")):  # fmt: skip
        config = tmp_path / "study.yaml"
        config.write_text(f"losses: [gamma0.3, ls0.1]\nbaselines: {baselines}\nreport_dir: {tmp_path / 'r'}\n")
        with pytest.raises(SystemExit):
            script.main(["--study_config", str(config)])
        assert named in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.slow
def test_compare_losses_end_to_end(tmp_path):
    """A tiny study through the real task layer: two losses, label noise, report and plots; rerun reuses runs."""
    script = _load_script()
    report_dir = tmp_path / "report"
    tiny = ["--", "--synthetic_train_examples", "160", "--num_train_epochs", "1", "--max_eval_samples", "16",
            "--generation_max_length", "12", "--per_device_train_batch_size", "16", "--logging_steps", "2"]  # fmt: skip
    argv = ["--losses", "ce", "gamma0.8b0.2", "--seeds", "0", "--noise_rates", "0", "0.5", "--noise_losses", "ce",
            "--report_dir", str(report_dir), *tiny]  # fmt: skip
    path = script.main(argv)
    with open(path) as f:
        text = f.read()
    assert "| ce | 0 | 1 |" in text and "| gamma0.8b0.2 | 0 | 1 |" in text and "| ce | 0.5 | 1 |" in text
    with open(report_dir / "results.json") as f:
        results = {(r["loss"], r["noise"]): r["metrics"] for r in json.load(f)}
    assert set(results) == {("ce", 0.0), ("gamma0.8b0.2", 0.0), ("ce", 0.5)}
    for metrics in results.values():
        assert {"eval_bleu", "eval_nll", "eval_ece", "eval_confidence", "eval_token_accuracy"} <= set(metrics)
    # per-example records for bootstrap intervals: one row per evaluation example, corpus BLEU recomputed exactly
    from hf_tvd_loss.study.stats import metric_from_examples

    with open(report_dir / "runs" / "ce__seed0__noise0" / "result.json") as f:
        per_example = json.load(f)["per_example"]
    assert set(per_example) == {"nll", "calibration", "bleu_stats", "chrf_stats"}
    assert {len(rows) for rows in per_example.values()} == {16}
    assert metric_from_examples("eval_bleu", per_example) == pytest.approx(results[("ce", 0.0)]["eval_bleu"])
    assert metric_from_examples("eval_nll", per_example) == pytest.approx(results[("ce", 0.0)]["eval_nll"], rel=1e-5)
    assert "| gamma0.8b0.2 | 0 | 1 |" in text.split("## Differences from `ce`")[1]
    # the loss settings really differed: γ-CE's logged weight mean is below 1, cross-entropy's is exactly 1
    with open(report_dir / "runs" / "ce__seed0__noise0" / "result.json") as f:
        ce_history = json.load(f)["history"]
    with open(report_dir / "runs" / "gamma0.8b0.2__seed0__noise0" / "result.json") as f:
        gamma_history = json.load(f)["history"]
    assert all(row["tvd_weight_mean"] == pytest.approx(1.0) for row in ce_history if "tvd_weight_mean" in row)
    assert all(row["tvd_weight_mean"] < 0.99 for row in gamma_history if "tvd_weight_mean" in row)
    # noisy targets make the training NLL worse than clean ones from the same seed
    with open(report_dir / "runs" / "ce__seed0__noise0.5" / "result.json") as f:
        noisy_history = json.load(f)["history"]
    last = lambda history: [row["nll"] for row in history if "nll" in row and "eval_nll" not in row][-1]  # noqa: E731
    assert last(noisy_history) > last(ce_history)
    for png in ["learning_curves.png", "reliability_diagrams.png", "metric_vs_noise.png"]:
        assert (report_dir / png).stat().st_size > 1000
    mtime = os.path.getmtime(report_dir / "runs" / "ce__seed0__noise0" / "result.json")
    script.main(argv)  # finished runs are reused, not redone
    assert os.path.getmtime(report_dir / "runs" / "ce__seed0__noise0" / "result.json") == mtime


def test_classification_study_judges_the_clean_test_split(tmp_path, capsys):
    """A tiny classification study: symmetric noise on the training labels only, seeded and recorded per example;
    metrics on the clean test split before and after temperature scaling, memorisation of the flipped labels,
    paired intervals over test examples; a noisy validation split on request."""
    from hf_tvd_loss.study.command import main
    from hf_tvd_loss.study.stats import metric_from_examples

    report_dir = tmp_path / "report"
    tiny = ["--", "--synthetic_train_examples", "32", "--synthetic_eval_examples", "16", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "16", "--logging_steps", "1", "--max_seq_length", "48"]  # fmt: skip
    argv = ["--task", "classification", "--losses", "ce", "gce0.7", "--seeds", "0", "--noise_rates", "0", "0.5",
            "--noise_losses", "ce", "--report_dir", str(report_dir), "--jobs", "1", "--noisy_validation", *tiny]  # fmt: skip
    with open(main(argv), encoding="utf-8") as f:
        text = f.read()
    assert "| ce | 0.5 | 1 |" in text and "clean-test accuracy" in text and "ECE (T-scaled)" in text
    assert "the validation split is noisy (the same noise), the test split clean" in text
    with open(report_dir / "results.json") as f:
        results = {(r["loss"], r["noise"]): r["metrics"] for r in json.load(f)}
    assert set(results) == {("ce", 0.0), ("gce0.7", 0.0), ("ce", 0.5)}
    for (_, noise), metrics in results.items():
        assert {"test_accuracy", "test_macro_f1", "test_nll", "test_ece", "test_nll_ts", "test_ece_ts",
                "temperature", "train_noisy_accuracy"} <= set(metrics)  # fmt: skip
        assert ("train_flipped_memorised" in metrics) == (noise > 0)
    with open(report_dir / "runs" / "ce__seed0__noise0.5" / "result.json") as f:
        run = json.load(f)
    assert {len(rows) for rows in run["per_example"].values()} == {16}  # one row per clean test example
    for metric in ("test_accuracy", "test_nll", "test_ece", "test_macro_f1", "test_ece_ts"):
        assert metric_from_examples(metric, run["per_example"]) == pytest.approx(
            results[("ce", 0.5)][metric], abs=1e-6
        )
    # the test split is clean: the runs with and without noise were evaluated on the same labels
    with open(report_dir / "runs" / "ce__seed0__noise0" / "predictions.jsonl") as f:
        clean = [json.loads(line)["label"] for line in f]
    with open(report_dir / "runs" / "ce__seed0__noise0.5" / "predictions.jsonl") as f:
        assert [json.loads(line)["label"] for line in f] == clean
    assert "Δ clean-test accuracy" in text.split("## Differences from `ce`")[1]


def test_classification_study_judges_the_model_selected_on_validation_too(tmp_path):
    """With an evaluation per epoch and metric_for_best_model, each run is judged twice: the last model and the one of
    the epoch with the best validation accuracy (its trainable parameters kept in memory, no checkpoint written).
    The restored model is the one evaluated then: its validation accuracy is the one logged at that step."""
    from hf_tvd_loss.study.command import main
    from hf_tvd_loss.study.stats import metric_from_examples

    report_dir = tmp_path / "report"
    argv = ["--task", "classification", "--losses", "ce", "--seeds", "0", "--noise_rates", "0.5",
            "--report_dir", str(report_dir), "--jobs", "1", "--",
            "--synthetic_train_examples", "48", "--synthetic_eval_examples", "24", "--num_train_epochs", "4",
            "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--max_seq_length", "48",
            "--eval_strategy", "epoch", "--metric_for_best_model", "accuracy"]  # fmt: skip
    with open(main(argv), encoding="utf-8") as f:
        text = f.read()
    assert "selected: accuracy" in text and "selected: epoch" in text
    with open(report_dir / "runs" / "ce__seed0__noise0.5" / "result.json") as f:
        run = json.load(f)
    metrics = run["metrics"]
    in_training = [row for row in run["history"] if "eval_accuracy" in row][:4]  # one per epoch, then the final one
    best = max(row["eval_accuracy"] for row in in_training)
    first_best = next(row for row in in_training if row["eval_accuracy"] == best)
    assert metrics["selected_step"] == first_best["step"] < in_training[-1]["step"]  # not the last model here
    assert metrics["selected_validation_accuracy"] == pytest.approx(best, abs=1e-9)
    assert metrics["validation_accuracy"] == pytest.approx(in_training[-1]["eval_accuracy"], abs=1e-9)
    for metric in ("test_accuracy", "test_nll", "test_ece_ts"):
        assert metric_from_examples(f"selected_{metric}", run["per_example"]) == pytest.approx(
            metrics[f"selected_{metric}"], abs=1e-6
        )
    assert "selected_train_noisy_accuracy" in metrics and "selected_train_flipped_memorised" in metrics


@pytest.mark.parametrize(("argv", "message"), [
    (["--task", "classification", "--noise_kind", "tokens"], "noise_kind tokens corrupts target tokens"),
    (["--task", "translation", "--noisy_validation"], "noisy_validation applies the class-label noise"),
    (["--task", "summarization", "--noise_kind", "symmetric"], "flips class labels"),
])  # fmt: skip
def test_classification_noise_options_are_refused_where_they_do_not_apply(tmp_path, capsys, argv, message):
    from hf_tvd_loss.study.command import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--losses", "ce", "--seeds", "0", "--report_dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r" / "runs").exists()
