"""Loss comparison studies: γ-CE against cross-entropy, label smoothing, focal loss and DFT.

:func:`parse_loss` turns a short name into ``TVDArguments`` options; :func:`run_study` trains one task under
every (loss, seed, noise rate), skipping runs already finished; :func:`write_report` aggregates the results into
a markdown table (mean ± std over seeds) and PNG plots. ``scripts/compare_losses.py`` is the command line.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..ops.common import CALIBRATION_BINS
from .stats import Comparison, Interval, paired_comparisons

__all__ = ["LossSetting", "RunSpec", "TaskRunner", "parse_loss", "plan_runs", "run_study", "write_report"]

_FLOAT = r"(\d+(?:\.\d*)?(?:e-?\d+)?)"


@dataclass(frozen=True)
class LossSetting:
    """A named loss configuration: ``options`` are ``TVDArguments`` fields."""

    name: str
    options: tuple[tuple[str, Any], ...]
    family: str  # ce | ls | focal | gce | gamma (pure γ-CE) | tailr (γ-CE with b or ε) | dft | schedule
    gamma: float | None = None  # the (final) γ for γ-CE settings

    def argv(self) -> list[str]:
        out: list[str] = []
        for key, value in self.options:
            out += [f"--{key}", str(value)]
        return out


def parse_loss(spec: str) -> LossSetting:
    """Parse a loss name.

    ``ce``; ``ls`` or ``ls0.1`` (label smoothing ε); ``focal`` or ``focal2`` (focusing f); ``gce`` or ``gce0.7``
    (generalized cross-entropy with exponent q; bare ``gce`` keeps ``TVDArguments``' default q); ``gamma0.8``
    (γ-CE with b = 0); ``gamma0.1b0.3`` (with floor b), ``gamma0.1b0.3ls0.1`` (and label smoothing, TaiLr's translation
    setting); ``dft`` (γ = 1); ``sched0.8`` / ``sched0.8b0.3`` (γ linear from 0 to 0.8 over the first half of
    training). Any name may end with ``,key=value,...`` extra ``TVDArguments`` options.
    Pure γ-CE settings (b = 0, no smoothing, no extras) form the ``gamma`` family plotted against γ.
    """
    head, *extras = spec.split(",")
    extra: list[tuple[str, Any]] = []
    for item in extras:
        if "=" not in item:
            raise ValueError(f"loss {spec!r}: extra option {item!r} is not key=value")
        key, value = item.split("=", 1)
        extra.append((key.strip(), value.strip()))
    if head == "ce":
        return LossSetting(spec, (("gamma", 0.0), *extra), "ce", 0.0)
    if m := re.fullmatch(rf"ls{_FLOAT}?", head):
        eps = float(m.group(1) or 0.1)
        return LossSetting(spec, (("gamma", 0.0), ("label_smoothing", eps), *extra), "ls")
    if m := re.fullmatch(rf"focal{_FLOAT}?", head):
        f = float(m.group(1) or 2.0)
        return LossSetting(spec, (("loss_type", "focal"), ("focal_gamma", f), *extra), "focal")
    if m := re.fullmatch(rf"gce{_FLOAT}?", head):
        q = (("gce_q", float(m.group(1))),) if m.group(1) else ()
        return LossSetting(spec, (("loss_type", "gce"), *q, *extra), "gce")
    if head == "dft":
        return LossSetting(spec, (("gamma", 1.0), *extra), "dft", 1.0)
    if m := re.fullmatch(rf"gamma{_FLOAT}(?:b{_FLOAT})?(?:ls{_FLOAT})?", head):
        gamma, floor, eps = float(m.group(1)), float(m.group(2) or 0.0), float(m.group(3) or 0.0)
        options = (("gamma", gamma), ("min_weight", floor), ("label_smoothing", eps))
        pure = floor == 0.0 and eps == 0.0 and not extra
        return LossSetting(spec, (*options, *extra), "gamma" if pure else "tailr", gamma)
    if m := re.fullmatch(rf"sched{_FLOAT}(?:b{_FLOAT})?", head):
        gamma, floor = float(m.group(1)), float(m.group(2) or 0.0)
        options = (("gamma", gamma), ("min_weight", floor), ("gamma_schedule", "linear"), ("gamma_start", 0.0),
                   ("gamma_schedule_ratio", 0.5))  # fmt: skip
        return LossSetting(spec, (*options, *extra), "schedule", gamma)
    raise ValueError(
        f"unknown loss {spec!r}: expected ce, ls[ε], focal[f], gce[q], dft, gamma<γ>[b<b>][ls<ε>] or sched<γ>[b<b>] "
        "(optionally followed by ,key=value TVDArguments options)"
    )


@dataclass(frozen=True)
class RunSpec:
    loss: LossSetting
    seed: int
    noise: float

    @property
    def name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.loss.name)
        return f"{safe}__seed{self.seed}__noise{self.noise:g}"


def plan_runs(
    losses: Sequence[LossSetting],
    seeds: Sequence[int],
    noise_rates: Sequence[float],
    noise_losses: Sequence[str] | None,
    clean_seeds: Sequence[int] | None = None,
) -> list[RunSpec]:
    """Every loss × seed at noise 0 (the seeds of ``clean_seeds`` when given), and the losses named in
    ``noise_losses`` (all if None) at each other rate."""
    runs = [RunSpec(loss, seed, 0.0) for loss in losses for seed in (seeds if clean_seeds is None else clean_seeds)]
    for rate in noise_rates:
        if rate == 0.0:
            continue
        for loss in losses:
            if noise_losses is None or loss.name in noise_losses:
                runs += [RunSpec(loss, seed, rate) for seed in seeds]
    return runs


@dataclass
class StudyResult:
    spec: RunSpec
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    calibration_bins: list[list[float]] | None = None
    per_example: dict[str, list[Any]] | None = None  # per evaluation example, for paired bootstrap intervals


Runner = Callable[[RunSpec, str], dict[str, Any]]


def run_study(
    runs: Sequence[RunSpec], report_dir: str, runner: Runner, *, log: Callable[[str], None] = print, jobs: int = 1
) -> list[StudyResult]:
    """Run each spec with ``runner(spec, run_dir)`` unless ``run_dir/result.json`` exists (finished earlier).

    ``runner`` returns ``{"metrics": {...}, "history": [...], "calibration_bins": [[count, Σconf, Σcorrect]...]}``;
    it is saved as ``result.json`` (written last and atomically, so an interrupted run is redone, never half-read).
    With ``jobs`` > 1 the pending runs are trained in that many worker processes at once (``runner`` must then be
    picklable, as :func:`task_runner`'s is), each limited to ``cpu_count // jobs`` threads: small models do not use
    several cores well, so two single-threaded runs on two cores finish in about half the time of one after another.
    """
    pending = []
    for i, spec in enumerate(runs, 1):
        run_dir = os.path.join(report_dir, "runs", spec.name)
        if os.path.isfile(os.path.join(run_dir, "result.json")):
            log(f"[{i}/{len(runs)}] {spec.name}: done earlier, reusing {os.path.join(run_dir, 'result.json')}")
        else:
            pending.append((i, spec, run_dir))

    def save(spec: RunSpec, run_dir: str, payload: dict[str, Any]) -> None:
        os.makedirs(run_dir, exist_ok=True)
        result_file = os.path.join(run_dir, "result.json")
        tmp = result_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"loss": spec.loss.name, "seed": spec.seed, "noise": spec.noise, **payload}, f, indent=1)
        os.replace(tmp, result_file)

    if jobs > 1 and len(pending) > 1:
        import concurrent.futures
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
        with concurrent.futures.ProcessPoolExecutor(
            min(jobs, len(pending)), mp_context=context, initializer=_limit_threads, initargs=(threads,)
        ) as pool:
            futures = {}
            for i, spec, run_dir in pending:
                log(f"[{i}/{len(runs)}] {spec.name}: training (in one of {jobs} worker processes)")
                futures[pool.submit(runner, spec, run_dir)] = (spec, run_dir)
            try:
                for future in concurrent.futures.as_completed(futures):
                    spec, run_dir = futures[future]
                    save(spec, run_dir, future.result())
                    log(f"{spec.name}: done")
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    else:
        for i, spec, run_dir in pending:
            log(f"[{i}/{len(runs)}] {spec.name}: training")
            save(spec, run_dir, runner(spec, run_dir))

    results = []
    for spec in runs:
        with open(os.path.join(report_dir, "runs", spec.name, "result.json")) as f:
            data = json.load(f)
        results.append(StudyResult(spec, data["metrics"], data.get("history", []), data.get("calibration_bins"),
                                   data.get("per_example")))  # fmt: skip
    return results


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def aggregate(results: Sequence[StudyResult], columns: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (loss, noise): mean and std over seeds of each metric in ``columns``."""
    groups: dict[tuple[str, float], list[StudyResult]] = {}
    for r in results:
        groups.setdefault((r.spec.loss.name, r.spec.noise), []).append(r)
    rows = []
    for (loss, noise), members in groups.items():
        row: dict[str, Any] = {"loss": loss, "noise": noise, "seeds": len(members), "spec": members[0].spec}
        for column in columns:
            row[column] = _mean_std([m.metrics.get(column, float("nan")) for m in members])
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], labels: dict[str, str]) -> str:
    header = "| loss | label noise | seeds | " + " | ".join(labels.get(c, c) for c in columns) + " |"
    lines = [header, "|" + "---|" * (3 + len(columns))]
    for row in rows:
        cells = [_fmt(*row[c], digits=4 if "ece" in c or "confidence" in c or "accuracy" in c else 2) for c in columns]
        lines.append(f"| {row['loss']} | {row['noise']:g} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Generation-quality metrics of language-modelling runs (hf_tvd_loss.study.generation_metrics), when present.
GENERATION_COLUMNS = ["eval_gen_distinct_1", "eval_gen_distinct_2", "eval_gen_distinct_4", "eval_gen_seq_rep_4",
                      "eval_gen_rep_16", "eval_gen_words"]  # fmt: skip
GENERATION_LABELS = {"eval_gen_distinct_1": "distinct-1", "eval_gen_distinct_2": "distinct-2",
                     "eval_gen_distinct_3": "distinct-3", "eval_gen_distinct_4": "distinct-4",
                     "eval_gen_seq_rep_4": "seq-rep-4", "eval_gen_rep_16": "rep-16", "eval_gen_words": "words"}  # fmt: skip
SECONDARY_METRICS = [
    "eval_chrf",
    "eval_rouge1",
    "eval_rouge2",
]  # reported (and compared) beside the task metric when the runs have them
# metrics compared with the baseline: (higher is better, digits)
_TEST_METRICS = {"test_accuracy": (True, 4), "test_macro_f1": (True, 4), "test_nll": (False, 4),
                 "test_ece": (False, 4), "test_nll_ts": (False, 4), "test_ece_ts": (False, 4)}  # fmt: skip
INTERVAL_METRICS = {**_TEST_METRICS,
                    # the same for the model selected on validation (study.classification.ValidationSelection)
                    **{f"selected_{m}": v for m, v in _TEST_METRICS.items()},
                    "eval_bleu": (True, 2), "eval_chrf": (True, 2), "eval_rougeL": (True, 2), "eval_rouge1": (True, 2),
                    "eval_rouge2": (True, 2), "eval_nll": (False, 3),
                    "eval_perplexity": (False, 2), "eval_ece": (False, 4), "eval_token_accuracy": (True, 4),
                    "eval_gen_distinct_1": (True, 4), "eval_gen_distinct_2": (True, 4), "eval_gen_distinct_4": (True, 4),
                    "eval_gen_seq_rep_4": (False, 4), "eval_gen_rep_16": (False, 4), "eval_gen_words": (True, 1)}  # fmt: skip


def _seed_values(results: Sequence[StudyResult], loss: str, noise: float, column: str) -> list[float]:
    return [
        r.metrics[column]
        for r in results
        if r.spec.loss.name == loss
        and r.spec.noise == noise
        and column in r.metrics
        and not math.isnan(r.metrics[column])
    ]


def _interval_cell(interval: Interval | None, digits: int) -> str:
    if interval is None or math.isnan(interval.mean):
        return "–"
    if math.isnan(interval.low):
        return f"{interval.mean:+.{digits}f} (1 seed)"
    mark = " ✓" if interval.excludes_zero else ""
    return f"{interval.mean:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]{mark}"


def generation_section(
    rows: Sequence[dict[str, Any]], results: Sequence[StudyResult], columns: Sequence[str], labels: dict[str, str]
) -> list[str]:
    lines = [
        "## Generation quality (sampled continuations)",
        "",
        "Continuations of held-out prompts (the first 32 tokens of evaluation blocks) sampled from each fine-tuned "
        "model (temperature 1, no truncation, 64 new tokens), scored on words: distinct-n = distinct n-grams / all "
        "n-grams over all samples (higher = more diverse), seq-rep-4 = share of repeated 4-grams within a sample, "
        "rep-16 = share of words repeating one of the 16 before (lower = less repetitive). Mean ± std over seeds; "
        "the human continuations of the same prompts are the reference row.",
        "",
        "| loss | label noise | seeds | " + " | ".join(labels.get(c, c) for c in columns) + " |",
        "|" + "---|" * (3 + len(columns)),
    ]
    for row in rows:
        cells = [_fmt(*row[c], digits=INTERVAL_METRICS.get(c, (True, 4))[1]) for c in columns]
        lines.append(f"| {row['loss']} | {row['noise']:g} | {row['seeds']} | " + " | ".join(cells) + " |")
    human = [statistics.fmean(r.metrics[c.replace("eval_gen_", "eval_ref_")] for r in results
                              if c.replace("eval_gen_", "eval_ref_") in r.metrics) if any(
                                  c.replace("eval_gen_", "eval_ref_") in r.metrics for r in results) else float("nan")
             for c in columns]  # fmt: skip
    cells = [
        "–" if math.isnan(v) else f"{v:.{INTERVAL_METRICS.get(c, (True, 4))[1]}f}"
        for v, c in zip(human, columns, strict=True)
    ]
    lines += ["| human continuation | – | – | " + " | ".join(cells) + " |", ""]
    return lines


def comparison_section(
    comparisons: Sequence[Comparison],
    metrics: Sequence[str],
    generation_columns: Sequence[str],
    labels: dict[str, str],
    task_metric: str,
    higher_is_better: bool,
) -> list[str]:
    """Markdown: per baseline, a table of paired differences and a list of those distinguishable from zero."""
    lines: list[str] = []
    for baseline in dict.fromkeys(c.baseline for c in comparisons):
        group = [c for c in comparisons if c.baseline == baseline]
        lines += [
            f"## Differences from `{baseline}` (paired 95 % intervals)",
            "",
            f"Δ = loss − `{baseline}`, run for run with the same seed and noise rate. *seeds*: mean of the per-seed "
            "differences with a Student-t interval (n − 1 degrees of freedom; it covers another draw of seeds, and is "
            "wide when n is 2 or 3). *examples*: paired bootstrap over evaluation examples (1000 resamples; the same "
            "resampled examples for both losses and every seed; the corpus metric recomputed from per-example "
            "statistics); it covers the finite evaluation set for these seeds only. ✓: the interval excludes 0.",
            "",
        ]
        header = "| loss | label noise | seeds |"
        for metric in metrics:
            header += f" Δ {labels.get(metric, metric)} (seeds) | Δ {labels.get(metric, metric)} (examples) |"
        lines += [header, "|" + "---|" * (3 + 2 * len(metrics))]
        for c in group:
            cells = []
            for metric in metrics:
                digits = INTERVAL_METRICS.get(metric, (True, 3))[1]
                cells += [
                    _interval_cell(c.by_seeds.get(metric), digits),
                    _interval_cell(c.by_examples.get(metric), digits),
                ]
            lines.append(f"| {c.loss} | {c.noise:g} | {len(c.seeds)} | " + " | ".join(cells) + " |")
        lines.append("")
        if generation_columns:
            lines += ["Generation metrics (intervals over seeds only):", ""]
            lines += ["| loss | label noise | seeds | " + " | ".join(f"Δ {labels.get(m, m)}" for m in generation_columns) + " |",
                      "|" + "---|" * (3 + len(generation_columns))]  # fmt: skip
            for c in group:
                cells = [
                    _interval_cell(c.by_seeds.get(m), INTERVAL_METRICS.get(m, (True, 4))[1])
                    for m in generation_columns
                ]
                lines.append(f"| {c.loss} | {c.noise:g} | {len(c.seeds)} | " + " | ".join(cells) + " |")
            lines.append("")
        sure, examples_only, unsure = [], [], []
        for c in group:
            for metric in (*metrics, *generation_columns):
                seeds_interval, examples_interval = c.by_seeds.get(metric), c.by_examples.get(metric)
                if seeds_interval is None:
                    continue
                better_high = INTERVAL_METRICS.get(metric, (higher_is_better, 3))[0]
                digits = INTERVAL_METRICS.get(metric, (True, 3))[1]
                direction = "higher" if seeds_interval.mean > 0 else "lower"
                verdict = "better" if (seeds_interval.mean > 0) == better_high else "worse"
                if metric.startswith("eval_gen_"):
                    verdict = "more diverse" if (seeds_interval.mean > 0) == better_high else "less diverse"
                    if metric == "eval_gen_words":
                        verdict = "longer" if seeds_interval.mean > 0 else "shorter"
                text = (f"`{c.loss}` at noise {c.noise:g}: {labels.get(metric, metric)} {direction} by "
                        f"{abs(seeds_interval.mean):.{digits}f} ({verdict})")  # fmt: skip
                if seeds_interval.excludes_zero:
                    sure.append(f"{text}, seeds {_interval_cell(seeds_interval, digits)} (n = {seeds_interval.n})")
                elif examples_interval is not None and examples_interval.excludes_zero:
                    examples_only.append(f"{text}, examples {_interval_cell(examples_interval, digits)} "
                                         f"(seeds {_interval_cell(seeds_interval, digits)}, n = {seeds_interval.n})")  # fmt: skip
                elif metric == task_metric:
                    unsure.append(f"`{c.loss}` at noise {c.noise:g}")
        lines += ["**Distinguishable from zero over seeds** (the seed interval excludes 0):", ""]
        lines += [f"- {item}" for item in sure] or ["- none"]
        lines += ["", "**Only over evaluation examples** (excludes 0 for these seeds, not across seeds):", ""]
        lines += [f"- {item}" for item in examples_only] or ["- none"]
        lines += ["", f"**Not distinguishable from `{baseline}` on {labels.get(task_metric, task_metric)}** by "
                  "either interval: " + (", ".join(unsure) if unsure else "none") + ".", ""]  # fmt: skip
    return lines


def save_differences_plot(
    plt: Any, comparisons: Sequence[Comparison], task_metric: str, labels: dict[str, str], save: Callable[..., None]
) -> None:
    """Forest plot: Δ task metric and Δ ECE against the first baseline, seed (thick) and example (thin) intervals."""
    baseline = comparisons[0].baseline
    group = [c for c in comparisons if c.baseline == baseline]
    metrics = [m for m in (task_metric, "eval_ece") if any(m in c.by_seeds for c in group)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.45 * len(group) + 1.6), squeeze=False)
    names = [f"{c.loss} @ noise {c.noise:g} (n={len(c.seeds)})" for c in group]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for k, c in enumerate(group):
            y = len(group) - 1 - k
            seeds_interval, examples_interval = c.by_seeds.get(metric), c.by_examples.get(metric)
            if examples_interval is not None:
                ax.plot([examples_interval.low, examples_interval.high], [y - 0.15] * 2, color="C1", linewidth=1.5,
                        label="examples (bootstrap)" if k == 0 else None)  # fmt: skip
            if seeds_interval is not None and not math.isnan(seeds_interval.low):
                ax.plot([seeds_interval.low, seeds_interval.high], [y + 0.15] * 2, color="C0", linewidth=3,
                        label="seeds (t)" if k == 0 else None)  # fmt: skip
            if seeds_interval is not None:
                ax.plot([seeds_interval.mean], [y], "o", color="black", markersize=4)
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(-0.6, len(group) - 0.4)
        ax.set_yticks(range(len(group)), list(reversed(names)), fontsize=7)
        ax.set_xlabel(f"Δ {labels.get(metric, metric)} vs {baseline} (95 % intervals)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Paired differences from {baseline}")
    save(fig, "differences.png", f"Paired differences from {baseline} with 95 % intervals")


NOISE_DESCRIPTIONS = {
    "tokens": "Label noise replaces that fraction of training target tokens with random ones",
    "swap": "Label noise gives that fraction of training examples the reference of another training example (a "
    "summary of another document, a translation of another sentence)",
    "symmetric": "Label noise flips that fraction of training class labels to a uniformly drawn other class",
    "asymmetric": "Label noise flips that fraction of the training class labels of each mapped class to its fixed "
    "confusion class (by default class c to c+1 mod C)",
}
NOISE_AXES = {
    "tokens": "label-noise rate (fraction of training target tokens replaced)",
    "swap": "label-noise rate (fraction of training examples given another example's reference)",
    "symmetric": "label-noise rate (fraction of training labels flipped to another class)",
    "asymmetric": "label-noise rate (fraction of mapped training labels flipped to their confusion class)",
}


def write_report(
    results: Sequence[StudyResult],
    report_dir: str,
    *,
    task_metric: str,
    task_metric_label: str,
    higher_is_better: bool,
    command: str,
    title: str,
    baselines: Sequence[str] = ("ce",),
    noise_kind: str = "tokens",
    noisy_validation: bool = False,
) -> str:
    """Write ``report.md``, ``results.json`` and PNG plots into ``report_dir``; returns the report's path.

    Every other loss is compared with each loss in ``baselines`` that was run, paired by seed at each noise rate,
    with 95 % intervals over seeds and over evaluation examples (:func:`~hf_tvd_loss.study.stats.paired_comparisons`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a second task metric where the runs have it (translation: chrF beside BLEU)
    secondary = [c for c in SECONDARY_METRICS if c != task_metric and any(c in r.metrics for r in results)]
    classification = task_metric == TASK_METRICS["classification"][0]
    evaluation = CLASSIFICATION_COLUMNS if classification else [
        "eval_nll", "eval_perplexity", "eval_ece", "eval_confidence", "eval_token_accuracy"]  # fmt: skip
    columns = [task_metric, *secondary, *(c for c in evaluation if any(c in r.metrics for r in results))]
    ece_column = "test_ece" if classification else "eval_ece"
    columns = list(dict.fromkeys(columns))  # language modelling's task metric is the perplexity column itself
    generation_columns = [c for c in GENERATION_COLUMNS if any(c in r.metrics for r in results)]
    labels = {
        task_metric: task_metric_label,
        "eval_chrf": "chrF",
        "eval_rouge1": "ROUGE-1",
        "eval_rouge2": "ROUGE-2",
        "eval_nll": "NLL",
        "eval_perplexity": "perplexity",
        "eval_ece": "ECE",
        "eval_confidence": "mean confidence",
        "eval_token_accuracy": "token accuracy",
        **CLASSIFICATION_LABELS,
    }
    labels[task_metric] = task_metric_label
    rows = aggregate(results, columns + generation_columns)
    labels.update(GENERATION_LABELS)
    os.makedirs(report_dir, exist_ok=True)
    plots: list[tuple[str, str]] = []

    def save(fig: Any, filename: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(report_dir, filename), dpi=110)
        plt.close(fig)
        plots.append((filename, caption))

    # learning curves and reliability diagrams: at noise 0, or at the lowest noise rate a study without clean runs has
    shown_noise = min(r.spec.noise for r in results)
    noise_words = "no label noise" if shown_noise == 0.0 else f"label noise {shown_noise:g}"
    # learning curves: training NLL per step (comparable across losses), one line per loss
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for loss in dict.fromkeys(r.spec.loss.name for r in results):
        members = [r for r in results if r.spec.loss.name == loss and r.spec.noise == shown_noise]
        if not members:
            continue
        steps: dict[int, list[float]] = {}
        for m in members:
            for row in m.history:
                if "nll" in row and "eval_nll" not in row:
                    steps.setdefault(row["step"], []).append(row["nll"])
        if steps:
            xs = sorted(steps)
            ax.plot(xs, [statistics.fmean(steps[x]) for x in xs], label=loss)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("training NLL (mean over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"Learning curves ({noise_words})")
    save(fig, "learning_curves.png", "Learning curves")

    # reliability diagrams, one panel per loss (bins summed over seeds)
    losses = [name for name in dict.fromkeys(r.spec.loss.name for r in results)]
    cols = min(4, max(1, len(losses)))
    rows_n = math.ceil(len(losses) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, loss in zip(axes.flat, losses, strict=False):
        bins = None
        for r in results:
            if r.spec.loss.name == loss and r.spec.noise == shown_noise and r.calibration_bins:
                b = r.calibration_bins
                bins = (
                    b
                    if bins is None
                    else [[x + y for x, y in zip(u, v, strict=True)] for u, v in zip(bins, b, strict=True)]
                )
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        if bins:
            count, conf, correct = bins
            n = len(count)
            centers = [(i + 0.5) / n for i in range(n)]
            acc = [c / k if k else 0.0 for c, k in zip(correct, count, strict=True)]
            mean_conf = [c / k if k else 0.0 for c, k in zip(conf, count, strict=True)]
            ax.bar(centers, acc, width=1.0 / n, edgecolor="black", alpha=0.7, label="accuracy")
            ax.plot(mean_conf, acc, "o", markersize=3, color="red", label="(confidence, accuracy)")
        ece = next((row[ece_column][0] for row in rows if row["loss"] == loss and row["noise"] == shown_noise),
                   float("nan"))  # fmt: skip
        ax.set_title(f"{loss}  ECE {ece:.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(losses) :]:
        ax.axis("off")
    fig.supxlabel("confidence (max probability)")
    fig.supylabel("accuracy")
    save(fig, "reliability_diagrams.png", f"Reliability diagrams ({noise_words})")

    # task metric and ECE against γ (γ-CE settings, noise 0), baselines as horizontal lines
    gamma_rows = sorted(
        (row for row in rows if row["noise"] == 0.0 and row["spec"].loss.family in ("ce", "gamma", "dft")),
        key=lambda row: row["spec"].loss.gamma,
    )
    if gamma_rows:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        # γ values are spread over orders of magnitude (1e-7 ... 1): equally spaced categories read best
        positions = list(range(len(gamma_rows)))
        ticks = [f"{row['spec'].loss.gamma:g}" for row in gamma_rows]
        reference_rows = [
            row
            for row in rows
            if row["noise"] == 0.0 and row["spec"].loss.family in ("ls", "focal", "gce", "schedule")
        ]
        for ax, column in zip(axes, (task_metric, ece_column), strict=True):
            ax.errorbar(positions, [row[column][0] for row in gamma_rows], yerr=[row[column][1] for row in gamma_rows],
                        marker="o", capsize=3, color="C0", label="γ-CE, b=0 (γ=0: CE, γ=1: DFT); bars: ±1 std")  # fmt: skip
            for k, row in enumerate(gamma_rows):
                values = _seed_values(results, row["loss"], 0.0, column)
                ax.plot([k] * len(values), values, "x", color="C0", alpha=0.5, markersize=5)
            for k, row in enumerate(reference_rows):
                ax.axhline(row[column][0], linestyle="--", linewidth=1.2, color=f"C{k + 1}", label=row["loss"])
            ax.set_xticks(positions, ticks)
            ax.set_xlabel("γ")
            ax.set_ylabel(labels[column])
            ax.legend(fontsize=7)
        fig.suptitle("Task metric and calibration against γ (no label noise)")
        save(fig, "metric_vs_gamma.png", "Task metric and ECE against γ")

    # task metric and calibration against label-noise rate, one line per loss studied under noise
    noises = sorted({r.spec.noise for r in results})
    if len(noises) > 1:
        panels = [column for column in (task_metric, ece_column) if any(column in r.metrics for r in results)]
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
        for ax, column in zip(axes[0], panels, strict=True):
            for loss in losses:
                points = sorted((row["noise"], row[column]) for row in rows if row["loss"] == loss)
                if len(points) > 1:
                    line = ax.errorbar([p[0] for p in points], [p[1][0] for p in points],
                                       yerr=[p[1][1] for p in points], marker="o", capsize=3, label=loss)  # fmt: skip
                    for noise_rate, _ in points:
                        values = _seed_values(results, loss, noise_rate, column)
                        ax.plot([noise_rate] * len(values), values, "x", color=line[0].get_color(), alpha=0.5)
            ax.set_xlabel(NOISE_AXES[noise_kind] + "; ×: single seeds")
            ax.set_ylabel(labels.get(column, column))
            ax.legend(fontsize=8)
        fig.suptitle("Robustness to noisy training targets: the task metric and calibration (ECE)")
        save(fig, "metric_vs_noise.png", "Task metric and ECE against label noise")

    redundant = "eval_nll" if task_metric == "eval_perplexity" else "eval_perplexity"  # one of the two is enough
    compared = [task_metric, *(c for c in columns if c in INTERVAL_METRICS and c not in (task_metric, redundant))]
    comparisons = paired_comparisons(results, baselines, compared + generation_columns)
    if comparisons:
        save_differences_plot(plt, comparisons, task_metric, labels, save)

    best = (max if higher_is_better else min)(
        (row for row in rows if row["noise"] == 0.0 and not math.isnan(row[task_metric][0])),
        key=lambda row: row[task_metric][0],
        default=None,
    )
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"Mean ± standard deviation over seeds. {task_metric_label} is {'higher' if higher_is_better else 'lower'} "
        "= better; "
        + (
            "every metric is measured on the clean test split (ECE over 15 equal-width bins of the top-1 "
            "probability); T-scaled: after temperature scaling fitted on the validation split; train acc. (noisy "
            "labels): the final model's agreement with the labels it trained on; flipped memorised: the fraction of "
            "flipped training examples it predicts as their noisy label. "
            + NOISE_DESCRIPTIONS[noise_kind]
            + f"; the validation split is {'noisy (the same noise)' if noisy_validation else 'clean'}, the test "
            "split clean."
            if classification
            else "NLL/perplexity and calibration are measured with teacher forcing on the reference tokens of the "
            f"evaluation set (ECE over {CALIBRATION_BINS} equal-width confidence bins of the top-1 probability). "
            + NOISE_DESCRIPTIONS[noise_kind]
            + "; evaluation data are clean."
        ),
        "",
        markdown_table(rows, columns, labels),
        "",
    ]
    if best is not None:
        lines += [f"Best {task_metric_label} without label noise (by the mean): **{best['loss']}**.", ""]
    if generation_columns:
        lines += generation_section(rows, results, generation_columns, labels)
    if comparisons:
        lines += comparison_section(comparisons, compared, generation_columns, labels, task_metric, higher_is_better)
    for filename, caption in plots:
        lines += [f"![{caption}]({filename})", ""]
    path = os.path.join(report_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(report_dir, "results.json"), "w") as f:
        json.dump(
            [
                {"loss": r.spec.loss.name, "seed": r.spec.seed, "noise": r.spec.noise, "metrics": r.metrics}
                for r in results
            ],
            f,
            indent=1,
        )
    with open(os.path.join(report_dir, "comparisons.json"), "w") as f:
        json.dump(
            [
                {
                    "loss": c.loss,
                    "baseline": c.baseline,
                    "noise": c.noise,
                    "seeds": c.seeds,
                    "by_seeds": {k: v.as_dict() for k, v in c.by_seeds.items()},
                    "by_examples": {k: v.as_dict() for k, v in c.by_examples.items()},
                }
                for c in comparisons
            ],
            f,
            indent=1,
        )
    return path


# ----------------------------------------------------------------------------------------------- task runs
# Every run starts from plain γ-CE options, then applies its own, so a task's default loss (e.g. translation's
# γ=0.1 b=0.3 ε=0.1) never leaks into a baseline.
LOSS_RESET = ["--loss_type", "gamma_ce", "--gamma", "0", "--min_weight", "0", "--label_smoothing", "0",
              "--gamma_schedule", "constant"]  # fmt: skip


def loss_reset(loss: LossSetting) -> list[str]:
    """:data:`LOSS_RESET`, except for the runs of another loss type (focal, GCE), whose γ-CE fields stay at their
    defaults (TVDArguments refuses γ-CE options set beside another loss_type, which would not apply them)."""
    loss_type = dict(loss.options).get("loss_type", "gamma_ce")
    if loss_type == "gamma_ce":
        return LOSS_RESET
    from hf_tvd_loss.args import TVDArguments

    defaults = TVDArguments()
    return ["--loss_type", loss_type, "--gamma", repr(defaults.gamma), "--min_weight", repr(defaults.min_weight),
            "--label_smoothing", "0", "--gamma_schedule", "constant"]  # fmt: skip


def run_argv(task_name: str, task_argv: Sequence[str], spec: RunSpec, run_dir: str) -> list[str]:
    """The task script's options for one run: the shared ``task_argv``, then the loss reset to cross-entropy, the
    run's loss, seed and folder, each layer replacing the options it repeats (the task parser refuses repeats)."""
    from hf_tvd_loss.tasks import get_task

    return (
        get_task(task_name)
        .build_parser()
        .merge_args(
            task_argv, loss_reset(spec.loss), spec.loss.argv(), ["--seed", str(spec.seed), "--output_dir", run_dir]
        )
    )


def check_shared_task_args(task_name: str, task_argv: Sequence[str]) -> None:
    """Refuse shared task options that every run would replace (the loss options of ``LOSS_RESET``, the seed and the
    output folder): the study sets them per run, so a value given for all runs would be dropped without a word."""
    owned = {a.split("=", 1)[0] for a in [*LOSS_RESET, "--seed", "--output_dir"] if a.startswith("--")}
    given = sorted({a.split("=", 1)[0] for a in task_argv if a.split("=", 1)[0] in owned})
    if given:
        raise ValueError(
            f"task options {', '.join(given)} are set by the study for each run (the loss from --losses, where a "
            "name may end with ',key=value' options; the seed from --seeds; the folder under --report_dir): "
            f"remove them from the {task_name} options"
        )


# Which metric each task is judged by (key in the metrics, label, higher is better).
TASK_METRICS = {
    "translation": ("eval_bleu", "BLEU", True),
    "summarization": ("eval_rougeL", "ROUGE-L", True),
    "language_modeling": ("eval_perplexity", "perplexity", False),
    # judged on the clean test split (the validation split may be noisy: --noisy_validation)
    "classification": ("test_accuracy", "clean-test accuracy", True),
}
# The report's columns of a classification study (hf_tvd_loss.study.classification), after the task metric.
CLASSIFICATION_COLUMNS = ["test_macro_f1", "test_nll", "test_ece", "test_confidence", "test_nll_ts", "test_ece_ts",
                          "train_noisy_accuracy", "train_flipped_memorised",
                          # the model selected on validation (evaluations during training and metric_for_best_model)
                          "selected_epoch", "selected_test_accuracy", "selected_test_macro_f1", "selected_test_ece",
                          "selected_test_nll_ts", "selected_test_ece_ts", "selected_train_noisy_accuracy"]  # fmt: skip
CLASSIFICATION_LABELS = {"test_macro_f1": "macro-F1", "test_nll": "NLL", "test_ece": "ECE",
                         "test_confidence": "mean confidence", "test_nll_ts": "NLL (T-scaled)",
                         "test_ece_ts": "ECE (T-scaled)", "train_noisy_accuracy": "train acc. (noisy labels)",
                         "train_flipped_memorised": "flipped memorised", "selected_epoch": "selected: epoch",
                         "selected_test_accuracy": "selected: accuracy", "selected_test_macro_f1": "selected: macro-F1",
                         "selected_test_ece": "selected: ECE", "selected_test_nll_ts": "selected: NLL (T-scaled)",
                         "selected_test_ece_ts": "selected: ECE (T-scaled)",
                         "selected_train_noisy_accuracy": "selected: train acc. (noisy)"}  # fmt: skip


# The tasks whose targets are generated token sequences: token noise (tokens, swap), never class-label noise.
_GENERATION_TASKS = ("translation", "summarization", "language_modeling")


def apply_label_noise(dataset: Any, rate: float, vocab_size: int, protected: frozenset[int], seed: int) -> Any:
    """The training set with ``rate`` of its scored target tokens replaced (:func:`~hf_tvd_loss.study.noise.noisy_labels`).

    Each example gets its own random stream from ``(seed, index)``, so the noise does not depend on the order of
    processing. Input ids are left as they are (the noise models wrong references, not wrong sources).
    """
    import random

    from .noise import noisy_labels

    def corrupt(example: dict[str, Any], index: int) -> dict[str, Any]:
        rng = random.Random(f"label-noise-{seed}-{index}")
        return {"labels": noisy_labels(example["labels"], rate, vocab_size, rng, protected=protected)}

    return dataset.map(corrupt, with_indices=True, desc=f"label noise {rate:g}")


def apply_class_noise(
    dataset: Any,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    label_column: str = "label",
    *,
    flip_map: dict[int, int] | None = None,
) -> Any:
    """The training set of a classification task with ``rate`` of its class labels flipped: ``kind`` ``symmetric``
    (:func:`~hf_tvd_loss.study.noise.symmetric_class_noise`, a uniformly drawn other class) or ``asymmetric``
    (:func:`~hf_tvd_loss.study.noise.asymmetric_class_noise` with ``flip_map``, by default
    :func:`~hf_tvd_loss.study.noise.next_class_flip_map`: class c to c+1 mod C).

    The noisy label replaces ``label_column`` (what the model trains on); ``clean_label`` keeps the original and
    ``label_flipped`` (bool) says whether it was flipped, per example, for the study's records. Each example draws
    from its own random stream ``(seed, index)``, so the noise does not depend on the order of processing, and the
    two kinds flip the same examples at the same seed and rate when every class is mapped.
    """
    import random

    from .noise import CLASS_NOISE_KINDS, asymmetric_class_noise, next_class_flip_map, symmetric_class_noise

    if kind not in CLASS_NOISE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CLASS_NOISE_KINDS)}, got {kind!r}")
    if flip_map is not None and kind != "asymmetric":
        raise ValueError(f"flip_map is used by kind 'asymmetric' only, got kind {kind!r}")
    columns = list(getattr(dataset, "column_names", None) or [])
    if label_column not in columns:
        raise ValueError(f"label_column {label_column!r} is not a column of the dataset (columns: {columns})")
    taken = [name for name in ("clean_label", "label_flipped") if name in columns]
    if taken:
        raise ValueError(f"the dataset already has {', '.join(taken)}: class noise was applied to it before")
    mapping = (next_class_flip_map(num_classes) if flip_map is None else flip_map) if kind == "asymmetric" else None

    def noise(labels: list[int], rng: random.Random) -> tuple[list[int], list[bool]]:
        if mapping is not None:
            return asymmetric_class_noise(labels, rate, mapping, rng, num_classes=num_classes)
        return symmetric_class_noise(labels, rate, num_classes, rng)

    noise([], random.Random(0))  # the arguments are checked once, before any example

    def corrupt(example: dict[str, Any], index: int) -> dict[str, Any]:
        label = example[label_column]
        (noisy,), (flipped,) = noise([label], random.Random(f"class-noise-{seed}-{index}"))
        return {label_column: noisy, "clean_label": label, "label_flipped": flipped}

    features = None
    if getattr(dataset, "features", None) is not None:  # keep the label's feature (a ClassLabel's names) on both
        from datasets import Value

        features = dataset.features.copy()
        features["clean_label"] = features[label_column]
        features["label_flipped"] = Value("bool")
    return dataset.map(corrupt, with_indices=True, features=features, desc=f"{kind} class noise {rate:g}")


def apply_reference_swap(dataset: Any, rate: float, seed: int, *, prompt_target: bool) -> Any:
    """The training set with ``rate`` of its examples given another example's reference
    (:func:`~hf_tvd_loss.study.noise.swapped_references`): the realistic noise of a scraped corpus, where a
    summary or translation belongs to another document. Works on tokenised examples: an encoder-decoder's
    ``labels`` are exchanged; a decoder-only (``prompt_target``) example keeps its prompt (the unscored head of
    ``input_ids``) and takes the other example's scored target tokens. Evaluation data are untouched.
    """
    import random

    from ..tasks.prompting import IGNORE_INDEX, prompt_length
    from .noise import swapped_references

    source = swapped_references(len(dataset), rate, random.Random(f"reference-swap-{seed}"))
    labels = dataset["labels"]

    def swap(example: dict[str, Any], index: int) -> dict[str, Any]:
        other = labels[source[index]]
        if not prompt_target:
            return {"labels": other}
        start = prompt_length(example["labels"])
        target = [t for t in other if t != IGNORE_INDEX]
        ids = example["input_ids"][:start] + target
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * start + target}

    return dataset.map(swap, with_indices=True, desc=f"reference swap {rate:g}")


def task_runner(
    task_name: str,
    task_argv: Sequence[str],
    *,
    keep_models: bool = False,
    generation_prompts: int = 64,
    eval_examples: int | None = None,
    noise_kind: str = "tokens",
    noisy_validation: bool = False,
) -> Runner:
    """A :data:`Runner` that trains ``task_name`` in this process through the task layer.

    ``task_argv`` are the task script's options shared by every run (``--config``, data files, caps, ...). Each
    run's result also holds ``per_example`` evaluation records (:mod:`hf_tvd_loss.study.per_example`) for paired bootstrap
    intervals; language-modelling runs sample continuations of ``generation_prompts`` held-out prompts and add
    repetition and diversity metrics (:mod:`hf_tvd_loss.study.generation_metrics`). The trained weights are deleted after
    evaluation unless ``keep_models`` (a study of a 135M-parameter model would otherwise keep 0.5 GB per run).
    ``eval_examples`` keeps the first N preprocessed evaluation examples (for language modelling: blocks; the task's
    ``--max_eval_samples`` counts raw texts). ``noise_kind`` says what a noise rate corrupts: ``tokens`` (that
    fraction of scored target tokens replaced at random) or ``swap`` (that fraction of training examples trained
    on another example's reference; summarization and translation). The runner is picklable (for
    ``run_study(..., jobs=N)``).
    """
    from hf_tvd_loss.tasks import get_task

    from .noise import CLASS_NOISE_KINDS, NOISE_KINDS

    get_task(task_name)  # an unknown task fails here, not in a worker
    if noise_kind not in NOISE_KINDS:
        raise ValueError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}, got {noise_kind!r}")
    if noise_kind in CLASS_NOISE_KINDS and task_name in _GENERATION_TASKS:
        raise ValueError(f"noise_kind {noise_kind} flips class labels: it applies to classification tasks, not to "
                         f"{task_name} (use noise_kind tokens or swap)")  # fmt: skip
    if noise_kind not in CLASS_NOISE_KINDS and task_name not in _GENERATION_TASKS:
        raise ValueError(f"noise_kind {noise_kind} corrupts target tokens: the {task_name} task's noise flips class "
                         f"labels (use noise_kind {' or '.join(CLASS_NOISE_KINDS)})")  # fmt: skip
    if noisy_validation and noise_kind not in CLASS_NOISE_KINDS:
        raise ValueError("noisy_validation applies the class-label noise to the validation split too: it needs "
                         f"noise_kind {' or '.join(CLASS_NOISE_KINDS)}")  # fmt: skip
    if noise_kind == "swap" and task_name == "language_modeling":
        raise ValueError("noise_kind swap exchanges references between examples: it applies to summarization and "
                         "translation, not to language modelling (use noise_kind tokens)")  # fmt: skip
    return TaskRunner(task_name, list(task_argv), keep_models, generation_prompts, eval_examples, noise_kind,
                      noisy_validation)  # fmt: skip


@dataclass(frozen=True)
class TaskRunner:
    task_name: str
    task_argv: list[str]
    keep_models: bool = False
    generation_prompts: int = 64
    eval_examples: int | None = None
    noise_kind: str = "tokens"
    noisy_validation: bool = False

    def __call__(self, spec: RunSpec, run_dir: str) -> dict[str, Any]:
        import glob
        import shutil

        from hf_tvd_loss.tasks import get_task
        from hf_tvd_loss.tasks.run import build, prepare, train_and_evaluate

        from .per_example import ExampleRecorder

        task = get_task(self.task_name)
        task_name, task_argv = self.task_name, self.task_argv
        generation_prompts, eval_examples, keep_models = self.generation_prompts, self.eval_examples, self.keep_models
        if os.path.isdir(run_dir):  # left by an interrupted run (no result.json): start it again
            shutil.rmtree(run_dir)
        prepared = prepare(task, run_argv(task_name, task_argv, spec, run_dir))
        built = build(prepared)
        from .noise import CLASS_NOISE_KINDS

        if spec.noise > 0 and self.noise_kind in CLASS_NOISE_KINDS:
            classes = len(prepared.config.id2label)
            built.trainer.train_dataset = apply_class_noise(
                built.trainer.train_dataset, self.noise_kind, spec.noise, classes, spec.seed, label_column="labels"
            )
            if self.noisy_validation and "validation" in built.datasets:  # its own stream: not the train indices'
                noisy = apply_class_noise(built.datasets["validation"], self.noise_kind, spec.noise, classes,
                                          spec.seed + 1_000_003, label_column="labels")  # fmt: skip
                built.datasets["validation"] = built.trainer.eval_dataset = noisy
        elif spec.noise > 0 and self.noise_kind == "swap":
            built.trainer.train_dataset = apply_reference_swap(
                built.trainer.train_dataset,
                spec.noise,
                spec.seed,
                prompt_target=getattr(prepared.task, "decoder_only", False),
            )
        elif spec.noise > 0:
            tokenizer = built.tokenizer
            protected = frozenset(int(i) for i in tokenizer.all_special_ids)
            built.trainer.train_dataset = apply_label_noise(
                built.trainer.train_dataset, spec.noise, len(tokenizer), protected, spec.seed
            )
        if eval_examples is not None and "validation" in built.datasets:
            kept = built.datasets["validation"].select(range(min(eval_examples, len(built.datasets["validation"]))))
            built.datasets["validation"] = built.trainer.eval_dataset = kept
        recorder = ExampleRecorder(built.trainer, task, built.tokenizer, prepared.data_args)
        selection = None
        training_args = prepared.training_args
        if (
            task_name == "classification"
            and training_args.metric_for_best_model
            and training_args.do_train
            and (str(training_args.eval_strategy) != "no")
        ):
            from .classification import ValidationSelection

            selection = ValidationSelection(built.trainer.model, training_args.metric_for_best_model,
                                            bool(training_args.greater_is_better))  # fmt: skip
            built.trainer.add_callback(selection)
        metrics = train_and_evaluate(prepared, built)
        sums = getattr(built.trainer, "last_calibration_sums", None)
        samples = None
        per_example = recorder.record()
        bins = None if sums is None else sums.tolist()
        if task_name == "classification":  # judged on the clean test split, with temperature scaling
            from .classification import classification_evaluation

            extra, per_example = classification_evaluation(built.trainer, built.datasets, built.trainer.train_dataset)
            metrics.update(extra)
            if selection is not None:  # the model selected on validation, judged the same way (after the last)
                selection.restore()
                chosen, chosen_rows = classification_evaluation(built.trainer, built.datasets,
                                                                built.trainer.train_dataset)  # fmt: skip
                metrics.update({f"selected_{k}": v for k, v in chosen.items()})
                metrics.update(selected_epoch=float(selection.epoch), selected_step=selection.step)
                per_example.update({f"selected_{k}": v for k, v in chosen_rows.items()})
            total = [sum(column) for column in zip(*per_example["test_calibration"], strict=True)]
            size = len(total) // 3  # the reliability diagram's bins: count, Σ confidence, Σ correct
            bins = [total[:size], total[size : 2 * size], total[2 * size :]]
        if task_name == "language_modeling" and generation_prompts > 0 and "validation" in built.datasets:
            from .generation_metrics import lm_generation_report

            generated, samples = lm_generation_report(
                built.trainer.model, built.tokenizer, built.datasets["validation"], seed=spec.seed,
                num_prompts=generation_prompts,
            )  # fmt: skip
            metrics.update({f"eval_{k}": v for k, v in generated.items()})
        if not keep_models:
            for path in glob.glob(os.path.join(run_dir, "*.safetensors")) + glob.glob(
                os.path.join(run_dir, "pytorch_model*.bin")
            ):
                os.remove(path)
        return {
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "history": built.trainer.state.log_history,
            "calibration_bins": bins,
            "per_example": per_example,
            "samples": samples,
        }
