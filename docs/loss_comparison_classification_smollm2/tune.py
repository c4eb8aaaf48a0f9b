"""Tuned γ-CE against tuned cross-entropy at 40 % symmetric label noise (SmolLM2-135M-Instruct on Bible genres).

With the budget of the first study (classification_smollm2_bible.yaml: 6 epochs, 29 of 30 blocks frozen, their
outputs cached), ``Trainer.hyperparameter_search`` (optuna, a grid: every point once) chooses on the clean
validation split (objective ``eval_accuracy``, ``metric_for_best_model=accuracy``), with the same number of trials
(5) each:

1. cross-entropy: the learning rate, from 1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3;
2. γ-CE, at the learning rate cross-entropy chose: γ and the floor b, from γ 0.1, 0.3, 0.5, 0.8 with b 0 and
   γ 0.5 with TaiLr's b 0.2.

(Sequential on purpose: five trials cannot cover a three-dimensional space, and the loss's own parameters are what
is compared; γ-CE gets no learning-rate trials of its own.) Every trial trains on the training labels with seed 0's
40 % symmetric noise (the study's noise for seed 0) from a fresh model (head initialised under seed 0). The two
winners are then trained with seeds 0-2 through the study (noisy runs only) and compared on the clean test split.
From the repository root, after the set-up in classification_smollm2_bible.yaml:

    nohup nice -n 10 python docs/loss_comparison_classification_smollm2/tune.py > reports/cls_smollm2_tune.log 2>&1 &

The searches' trials are written to reports/tune_smollm2_bible/search.json (a finished search is reused on restart).
"""

from __future__ import annotations

import json
import os
import sys

import optuna
import yaml
from transformers import set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prefix_cache  # noqa: E402

from hf_tvd_loss import TVDTrainer  # noqa: E402
from hf_tvd_loss.study.command import main as study  # noqa: E402
from hf_tvd_loss.study.compare import apply_class_noise  # noqa: E402
from hf_tvd_loss.tasks import get_task  # noqa: E402
from hf_tvd_loss.tasks.modeling import auto_model_class, freeze_layers  # noqa: E402
from hf_tvd_loss.tasks.run import build, prepare  # noqa: E402

CONFIG = "configs/compare/classification_smollm2_bible.yaml"
OUT = os.path.join("reports", "tune_smollm2_bible")
NOISE, SEED = 0.4, 0
RATES = [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3]
SETTINGS = {"gamma0.1": (0.1, 0.0), "gamma0.3": (0.3, 0.0), "gamma0.5": (0.5, 0.0), "gamma0.8": (0.8, 0.0),
            "gamma0.5b0.2": (0.5, 0.2)}  # fmt: skip


def ce_space(trial: optuna.Trial) -> dict[str, float]:
    return {"learning_rate": trial.suggest_categorical("learning_rate", RATES)}


def gamma_space(trial: optuna.Trial) -> dict[str, float]:
    gamma, floor = SETTINGS[trial.suggest_categorical("setting", list(SETTINGS))]
    return {"gamma": gamma, "min_weight": floor}


def search(name: str, space: object, grid: dict[str, list], overrides: dict[str, object]) -> dict[str, object]:
    with open(CONFIG, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    options = {**config["task_args"], "do_predict": False, "metric_for_best_model": "accuracy", **overrides}
    del options["test_file"]  # the search never sees the test split
    argv = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    argv += ["--output_dir", os.path.join(OUT, name), "--seed", str(SEED)]
    task = get_task("classification")
    prepared = prepare(task, argv)
    built = build(prepared)
    classes = len(prepared.config.id2label)
    noisy = apply_class_noise(built.datasets["train"], "symmetric", NOISE, classes, SEED, label_column="labels")

    def model_init():  # the pretrained model with a fresh head (seeded), the study's frozen blocks and their cache
        set_seed(SEED)
        model = auto_model_class(prepared.task).from_pretrained(
            prepared.model_args.model_name_or_path, config=prepared.config, use_safetensors=True
        )
        prepared.task.configure_model(model, built.tokenizer, prepared.data_args, prepared.training_args)
        freeze_layers(model, prepared.model_args)
        return model

    trainer = TVDTrainer(
        model_init=model_init, args=prepared.training_args, train_dataset=noisy,
        eval_dataset=built.datasets["validation"], data_collator=built.trainer.data_collator,
        compute_metrics=built.trainer.compute_metrics, tvd_args=prepared.tvd_args,
    )  # fmt: skip
    storage = f"sqlite:///{os.path.join(OUT, name)}.db"  # every trial recorded by optuna
    best = trainer.hyperparameter_search(
        hp_space=space, n_trials=len(next(iter(grid.values()))), backend="optuna",
        sampler=optuna.samplers.GridSampler(grid, seed=SEED),
        study_name=name, storage=storage,
    )  # fmt: skip
    trials = optuna.load_study(study_name=name, storage=storage).trials
    return {"best": best.hyperparameters, "objective": best.objective,
            "trials": [{"params": t.params, "value": t.value} for t in trials]}  # fmt: skip


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    print(f"cache: {prefix_cache.load()} examples loaded", flush=True)
    path = os.path.join(OUT, "search.json")
    found = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    searches = (("ce", ce_space, {"learning_rate": RATES}, {"gamma": 0, "min_weight": 0}),
                ("gamma", gamma_space, {"setting": list(SETTINGS)}, None))  # fmt: skip
    for name, space, grid, overrides in searches:
        if name not in found:
            if overrides is None:  # γ-CE at the learning rate cross-entropy chose
                overrides = {"learning_rate": found["ce"]["best"]["learning_rate"]}
            found[name] = search(name, space, grid, overrides)
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(found, handle, indent=1)
        print(f"{name}: best {found[name]['best']} (validation accuracy {found[name]['objective']:.4f})", flush=True)
    rate = found["ce"]["best"]["learning_rate"]
    gamma, floor = SETTINGS[found["gamma"]["best"]["setting"]]
    losses = [f"ce,learning_rate={rate:g}", f"gamma{gamma:g}b{floor:g},learning_rate={rate:g}"]
    study(["--study_config", CONFIG, "--losses", *losses, "--baselines", losses[0], "--seeds", "0", "1", "2",
           "--clean_seeds",
           "--noise_rates", str(NOISE), "--report_dir", "reports/compare_classification_smollm2_bible_tuned"],
          prog="python -m hf_tvd_loss compare")  # fmt: skip


if __name__ == "__main__":
    main()
