"""Compare γ-CE with cross-entropy, label smoothing, focal loss and DFT on one task: quality, calibration, noise.

Trains the same model on the same data under every loss setting and seed (and, for some losses, with label noise
injected into the training targets), then writes a report folder: ``report.md`` (mean ± std over seeds of the
task metric, NLL/perplexity, expected calibration error, mean confidence and token accuracy) and PNG plots
(learning curves, reliability diagrams, metric and ECE against γ, metric against the noise rate). Finished runs
are reused when the command is run again, so an interrupted study resumes.

The command line of the study: ``hf-tvd-loss compare`` (installed with the package; also ``python -m hf_tvd_loss
compare``) and ``python scripts/compare_losses.py`` in a clone run :func:`main`. Default study (synthetic de→en
translation, tiny transformer from scratch, trained to convergence; 42 runs in 2 worker processes; measured from a
fresh clone on 2 idle CPU cores: 8 min 34 s wall, 16.6 CPU-minutes)::

    hf-tvd-loss compare

Other tasks and settings; options after ``--`` go to the task (see ``hf-tvd-loss <task> --help``)::

    hf-tvd-loss compare --task language_modeling --losses ce gamma1e-7b0.2 dft --seeds 0 1 2
    hf-tvd-loss compare --study_config configs/compare/translation_bible.yaml   # real data, a GPU

Loss names: ``ce``, ``ls0.1``, ``focal2``, ``dft``, ``gamma<γ>`` (b=0), ``gamma<γ>b<b>[ls<ε>]``, ``sched<γ>[b<b>]`` (γ
linear from 0 over the first half of training), each optionally followed by ``,key=value`` TVDArguments options.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..tasks import get_task
from ..tasks.cli import load_yaml_config, repeated_keys
from ..tasks.data import FILE_OPTIONS
from .compare import (
    TASK_METRICS,
    check_shared_task_args,
    parse_loss,
    plan_runs,
    run_study,
    task_runner,
    write_report,
)
from .noise import NOISE_KINDS

# the γ sweep without floor or smoothing (γ=0 is ce, γ=1 is dft), the usual alternatives, TaiLr's own translation
# setting (γ=0.1, b=0.3, ε=0.1) and a schedule from cross-entropy to γ=0.8 with the floor
DEFAULT_LOSSES = ["ce", "gamma1e-7", "gamma0.1", "gamma0.5", "gamma0.8", "dft", "ls0.1", "focal2",
                  "gamma0.1b0.3ls0.1", "sched0.8b0.3"]  # fmt: skip
DEFAULT_NOISE_LOSSES = ["ce", "ls0.1", "focal2", "gamma0.1b0.3ls0.1"]
# Shared by every run of the default study: greedy decoding for evaluation and no test-set pass keep a run at
# about half a minute on one CPU core. Training runs to convergence, so that the seeds agree (measured: 3 epochs = 375
# steps left cross-entropy's BLEU at 35 ± 17 over 3 seeds; 6 epochs at lr 2e-3 at 93 ± 9; 6 epochs at lr 3e-3 with
# 200 warm-up steps converge), and 500 validation pairs instead of 100 make the evaluation itself less noisy;
# everything else is the translation script's offline default.
_QUIET = ["--do_predict", "false", "--report_to", "none", "--disable_tqdm", "true"]
DEFAULT_TASK_ARGS = {
    "translation": [
        *_QUIET,
        "--generation_num_beams",
        "1",
        "--num_train_epochs",
        "6",
        "--warmup_steps",
        "200",
        "--synthetic_eval_examples",
        "500",
        "--max_eval_samples",
        "500",
    ],  # fmt: skip
    "summarization": [*_QUIET, "--generation_num_beams", "1"],
    "language_modeling": _QUIET,
    # judged on the clean test split (do_predict on); trained long enough for cross-entropy to fit noisy labels
    "classification": ["--report_to", "none", "--disable_tqdm", "true", "--num_train_epochs", "8"],
}
# Classification: the noisy-label literature's baselines (label smoothing, focal, GCE q=0.7) beside γ-CE across γ
# and TaiLr's floor b=0.2 at one γ; every loss also under noise.
DEFAULT_CLASSIFICATION_LOSSES = ["ce", "ls0.1", "focal2", "gce0.7", "gamma0.1", "gamma0.5", "gamma0.8",
                                 "gamma0.5b0.2", "dft"]  # fmt: skip
DATA_OPTIONS = tuple(f"--{name}" for name in (*FILE_OPTIONS, "dataset_name"))  # options that name the data


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` less the given options and their values (``--name value`` pairs)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in options:
            skip = True
        else:
            kept.append(item)
    return kept


STUDY_KEYS = {"task", "losses", "seeds", "noise_rates", "noise_losses", "report_dir", "task_args", "baselines",
              "generation_prompts", "eval_examples", "jobs", "noise_kind", "noisy_validation", "clean_seeds"}  # fmt: skip


PROG = "hf-tvd-loss compare"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The study's options; ``prog`` names the command in the usage line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASK_METRICS), default=None, help="Task (default: translation).")
    parser.add_argument(
        "--losses", nargs="+", default=None, help=f"Loss settings (default: {' '.join(DEFAULT_LOSSES)})."
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Seeds (default: 0 1 2).")
    parser.add_argument("--clean_seeds", nargs="*", type=int, default=None,
                        help="Seeds of the runs without label noise (default: --seeds), e.g. fewer where the study "
                        "is about noise; given with no seed, none (every comparison is then under noise).")  # fmt: skip
    parser.add_argument("--noise_rates", nargs="+", type=float, default=None,
                        help="Label-noise rates; 0 is always run (default: 0 0.2).")  # fmt: skip
    parser.add_argument("--noise_kind", choices=list(NOISE_KINDS), default=None,
                        help="What label noise corrupts: tokens (that fraction of training target tokens replaced at "
                        "random; the generation tasks' default) or swap (that fraction of training examples given "
                        "another example's reference: summarization and translation); for classification, "
                        "symmetric (that fraction of training labels flipped to a uniformly drawn other class; its "
                        "default) or asymmetric (flipped to a fixed confusion class, c to c+1 mod C).")  # fmt: skip
    parser.add_argument("--noisy_validation", action="store_true", default=None,
                        help="Classification: apply the label noise to the validation split too (default: clean). "
                        "The test split is always clean.")  # fmt: skip
    parser.add_argument("--noise_losses", nargs="+", default=None,
                        help=f"Losses also run with label noise (default: {' '.join(DEFAULT_NOISE_LOSSES)}; 'all').")  # fmt: skip
    parser.add_argument("--baselines", nargs="+", default=None,
                        help="Losses every other loss is compared with, paired by seed (default: ce), e.g. a tuned "
                        "'ce,learning_rate=0.0002'.")  # fmt: skip
    parser.add_argument("--report_dir", default=None, help="Report folder (default: reports/compare_<task>).")
    parser.add_argument("--jobs", type=int, default=None,
                        help="Runs trained at once, in separate processes (default: 2 on a machine with 2 or more CPU "
                        "cores, else 1; a study config may set jobs). Use 1 for large models or a single GPU.")  # fmt: skip
    parser.add_argument("--study_config", default=None,
                        help="YAML file with any of: " + ", ".join(sorted(STUDY_KEYS)) + " (command line wins).")  # fmt: skip
    return parser


def load_study_config(path: str) -> dict:
    """The study YAML (the task scripts' loader): an unknown key is an error; the command line wins in :func:`main`."""
    return load_yaml_config(path, option="--study_config", allowed=STUDY_KEYS)


def _chosen(key: str, given: list[Any] | None, config: dict[str, Any], default: list[Any]) -> list[Any]:
    """The command line's list for ``key``, else the study config's, else ``default``; an empty list (which would
    plan no run, or fall back to the default without a word) and a value listed twice (two runs planned into one
    folder) are refused."""
    value = given if given is not None else config.get(key)
    if value is None:
        return list(default)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key} must be a non-empty list (leave it out for the default {default}), got {value!r}")
    _refuse_repeats(key, value)
    return value


def _refuse_repeats(key: str, values: list[Any]) -> None:
    repeated = [str(v) for v in repeated_keys(values)]
    if repeated:
        raise ValueError(
            f"{key} lists {repeated} more than once: the same run would be planned twice, into one folder"
        )


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> str:
    """Run the study ``argv`` asks for (default: the command line) and write its report; returns the report's path.
    ``prog`` is the command as typed (``hf-tvd-loss compare``, ``python scripts/compare_losses.py``): the usage line
    and the report's command line show it. Bad options exit with status 2 and one ``error:`` line, before any run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, task_extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser(prog).parse_args(own)
    try:
        config = load_study_config(args.study_config) if args.study_config else {}
        task = args.task or config.get("task", "translation")
        if task not in TASK_METRICS:
            raise ValueError(f"task must be one of {sorted(TASK_METRICS)}, got {task!r}")
        default_losses = DEFAULT_CLASSIFICATION_LOSSES if task == "classification" else DEFAULT_LOSSES
        losses = [parse_loss(name) for name in _chosen("losses", args.losses, config, default_losses)]
        _refuse_repeats("losses", [loss.name for loss in losses])
        seeds = _chosen("seeds", args.seeds, config, [0, 1, 2])
        noise_rates = _chosen("noise_rates", args.noise_rates, config,
                              [0.0, 0.2, 0.4] if task == "classification" else [0.0, 0.2])  # fmt: skip
        if any(not 0.0 <= r <= 1.0 for r in noise_rates):
            raise ValueError(f"noise rates must be in [0, 1], got {noise_rates}")
        clean_seeds = args.clean_seeds if args.clean_seeds is not None else config.get("clean_seeds")
        if clean_seeds is not None:
            if not isinstance(clean_seeds, list) or not all(isinstance(s, int) for s in clean_seeds):
                raise ValueError(f"clean_seeds must be a list of seeds (empty for none), got {clean_seeds!r}")
            _refuse_repeats("clean_seeds", clean_seeds)
            if not clean_seeds and not [r for r in noise_rates if r > 0]:
                raise ValueError("clean_seeds is empty and no noise rate is above 0: no run would be planned")
        names = [loss.name for loss in losses]
        noise_losses = args.noise_losses or config.get("noise_losses")
        if not args.noise_losses and args.losses and isinstance(noise_losses, list):
            # a config's noise losses, narrowed to the losses chosen on the command line
            noise_losses = [name for name in noise_losses if name in args.losses] or args.losses
        if noise_losses is None and task == "classification":  # noise is what the classification study is about
            noise_losses = names
        if noise_losses is None:  # not chosen: the default ones that are being compared
            noise_losses = [name for name in DEFAULT_NOISE_LOSSES if name in names] or names
        if noise_losses in ("all", ["all"]):
            noise_losses = names
        missing = [n for n in noise_losses if n not in names]
        if missing:
            raise ValueError(f"--noise_losses {missing} are not among --losses {names}")
        task_args = config.get("task_args", DEFAULT_TASK_ARGS[task])
        if "task_args" not in config and any(a.split("=")[0] in DATA_OPTIONS for a in task_extra):
            # the default study's corpus size means nothing for the user's own data (the task would refuse it)
            task_args = _without(task_args, ("--synthetic_train_examples", "--synthetic_eval_examples"))
        if isinstance(task_args, dict):
            task_args = [item for key, value in task_args.items() for item in (f"--{key}", str(value))]
        # options after `--` override the study's (the task parser refuses an option given twice)
        task_parser = get_task(task).build_parser()
        task_args = task_parser.merge_args(task_args, task_extra)
        task_parser.check_option_names(task_args)  # named here, not by the first run's worker process
        check_shared_task_args(task, task_args)
        baselines = args.baselines or config.get("baselines", ["ce"])
        if not (isinstance(baselines, list) and baselines and all(isinstance(b, str) for b in baselines)):
            raise ValueError(f"baselines must be a list of loss names, got {baselines!r}")
        unknown = [b for b in baselines if b not in names]
        if unknown and (args.baselines or ("baselines" in config and not args.losses)):
            # asked for (here or in the config that also lists the losses); a config's baselines are narrowed to the
            # losses chosen on the command line, as its noise losses are
            raise ValueError(f"baselines {unknown} are not among the losses {names}")
        jobs = args.jobs or int(config.get("jobs", 2 if (os.cpu_count() or 1) >= 2 else 1))
        if jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {jobs}")
        noise_kind = args.noise_kind or config.get("noise_kind", "symmetric" if task == "classification" else "tokens")
        noisy_validation = bool(args.noisy_validation or config.get("noisy_validation", False))
        report_dir = args.report_dir or config.get("report_dir") or os.path.join("reports", f"compare_{task}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    runs = plan_runs(losses, seeds, noise_rates, noise_losses, clean_seeds)
    clean = "" if clean_seeds is None else f", seeds {clean_seeds} without noise"
    print(f"[compare_losses] {task}: {len(runs)} runs ({len(losses)} losses × {len(seeds)} seeds{clean}, noise "
          f"{noise_rates}) → {report_dir}")  # fmt: skip
    start = time.time()
    try:
        eval_examples = config.get("eval_examples")
        runner = task_runner(task, task_args, generation_prompts=int(config.get("generation_prompts", 64)),
                             eval_examples=None if eval_examples is None else int(eval_examples),
                             noise_kind=noise_kind, noisy_validation=noisy_validation)  # fmt: skip
        results = run_study(runs, report_dir, runner, jobs=jobs)
    except ValueError as err:  # bad task options are refused by the first run, before it trains
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    metric, label, higher = TASK_METRICS[task]
    command = shlex.join([*shlex.split(prog), *argv])
    path = write_report(results, report_dir, task_metric=metric, task_metric_label=label, higher_is_better=higher,
                        command=command, title=f"Loss comparison: {task}", baselines=baselines,
                        noise_kind=noise_kind, noisy_validation=noisy_validation)  # fmt: skip
    print(f"[compare_losses] done in {time.time() - start:.0f} s; report: {path}")
    return path
