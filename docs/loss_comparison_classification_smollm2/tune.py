"""Tuned γ-CE against tuned cross-entropy at 40 % symmetric label noise (SmolLM2-135M-Instruct on Bible genres).

With the budget of the first study (classification_smollm2_bible.yaml: 6 epochs, 29 of 30 blocks frozen, their
outputs cached), ``Trainer.hyperparameter_search`` (optuna, TPE sampler seeded 0) picks, on the clean validation
split (objective ``eval_accuracy``, ``metric_for_best_model=accuracy``), with the same number of trials each:

* cross-entropy: the learning rate (1e-4 to 3e-3, log scale);
* γ-CE: γ (0.05 to 0.9), the floor b (0 or 0.2) and the learning rate (same range).

Every trial trains on the training labels with seed 0's 40 % symmetric noise (the study's noise for seed 0) from a
fresh model (head initialised under seed 0). The two winners are then trained with seeds 0-2 through the study
(noise 0.4; one clean run each, seed 0) and compared on the clean test split. From the repository root, after the
set-up in classification_smollm2_bible.yaml:

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
NOISE, SEED, TRIALS = 0.4, 0, 5
LR = (1e-4, 3e-3)


def spaces() -> dict[str, object]:
    return {
        "ce": lambda t: {"learning_rate": t.suggest_float("learning_rate", *LR, log=True)},
        "gamma": lambda t: {
            "gamma": t.suggest_float("gamma", 0.05, 0.9),
            "min_weight": t.suggest_categorical("min_weight", [0.0, 0.2]),
            "learning_rate": t.suggest_float("learning_rate", *LR, log=True),
        },
    }


def search(name: str, space: object, base_loss: list[str]) -> dict[str, object]:
    with open(CONFIG, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    options = {**config["task_args"], "do_predict": False, "metric_for_best_model": "accuracy"}
    del options["test_file"]  # the search never sees the test split
    argv = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    argv += ["--output_dir", os.path.join(OUT, name), "--seed", str(SEED), *base_loss]
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
        hp_space=space, n_trials=TRIALS, backend="optuna", sampler=optuna.samplers.TPESampler(seed=SEED),
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
    for name, base in (("ce", ["--gamma", "0", "--min_weight", "0"]), ("gamma", [])):
        if name not in found:
            found[name] = search(name, spaces()[name], base)
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(found, handle, indent=1)
        print(f"{name}: best {found[name]['best']} (validation accuracy {found[name]['objective']:.4f})", flush=True)
    ce, gm = found["ce"]["best"], found["gamma"]["best"]
    losses = [
        f"ce,learning_rate={ce['learning_rate']:.2e}",
        f"gamma{gm['gamma']:.2f}b{gm['min_weight']:g},learning_rate={gm['learning_rate']:.2e}",
    ]
    study(["--study_config", CONFIG, "--losses", *losses, "--seeds", "0", "1", "2", "--clean_seeds", "0",
           "--noise_rates", str(NOISE), "--report_dir", "reports/compare_classification_smollm2_bible_tuned"],
          prog="python -m hf_tvd_loss compare")  # fmt: skip


if __name__ == "__main__":
    main()
