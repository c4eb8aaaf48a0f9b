"""``hyperparameter_search`` on the TVD trainers (optuna backend): the loss's fields in the search space reach the
loss of each trial, the best run's parameters are those its model trained with, the default objective is eval_nll
(or metric_for_best_model), and bad spaces are refused before any training step."""

from __future__ import annotations

import dataclasses
import os

import optuna
import pytest
import torch
from datasets import Dataset
from tiny import VOCAB, collator, tiny_dataset, tiny_model
from transformers import TrainingArguments
from transformers.trainer_utils import HPSearchBackend

import hf_tvd_loss.trainer as trainer_module
from hf_tvd_loss import TVDArguments, TVDTrainer, probability_power_rule, tvd_weight
from hf_tvd_loss.checkpoints import read_checkpoint_marker
from hf_tvd_loss.hp_search import TUNABLE_TVD_FIELDS, split_search_params

optuna.logging.set_verbosity(optuna.logging.WARNING)
# log p of the probe tokens: the rule each training step's loss used is read at these points
PROBE = torch.tensor([0.01, 0.1, 0.5, 0.9]).log()


def learnable_dataset(n: int, seed: int) -> Dataset:
    """Runs of consecutive token ids from a random start: learnable in a few steps, so that a trial whose loss
    trains less (γ = 1, DFT, whose weights sit at the floor b = 0.2 early: a fifth of the gradient, with SGD)
    ends with a worse NLL than cross-entropy (γ = 0)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        start = int(torch.randint(3, VOCAB, (1,), generator=g))
        ids = [3 + (start + i) % (VOCAB - 3) for i in range(12)]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    return Dataset.from_list(rows)


def make_trainer(tmp_path, monkeypatch, *, tvd=None, learnable=False, eval_data=True, weight_rule=None, **args):
    """A TVDTrainer with model_init on a tiny Llama. ``trainer.seen`` records, for each training step's loss call,
    the trial number and the weights the loss's rule gives at PROBE; ``trainer.settings`` the trial's learning
    rate and min_weight as the trainer held them; ``trainer.evaluated`` the metrics of each trial's evaluate()."""
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, per_device_eval_batch_size=16, max_steps=3,
        learning_rate=3e-2, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    settings.update(args)
    train = learnable_dataset(32, 0) if learnable else tiny_dataset("llama", n=32)
    evaluation = (
        (learnable_dataset(16, 1) if learnable else tiny_dataset("llama", n=16, seed=1)) if eval_data else None
    )
    rule = {} if weight_rule is None else {"weight_rule": weight_rule}
    trainer = TVDTrainer(
        model_init=lambda: tiny_model("llama"), args=TrainingArguments(**settings), train_dataset=train,
        eval_dataset=evaluation, data_collator=collator("llama"), tvd_args=TVDArguments(**(tvd or {})), **rule,
    )  # fmt: skip
    trainer.seen, trainer.settings = [], {}
    original = trainer_module.token_weighted_cross_entropy

    def recording(*call_args, **kwargs):
        if torch.is_grad_enabled():  # a training step (evaluation runs without autograd)
            number = trainer._trial.number
            trainer.seen.append((number, call_args[2](PROBE)[0]))
            trainer.settings[number] = (trainer.args.learning_rate, trainer.tvd_args.min_weight)
        return original(*call_args, **kwargs)

    monkeypatch.setattr(trainer_module, "token_weighted_cross_entropy", recording)
    trainer.evaluated = {}
    evaluate = trainer.evaluate

    def recording_evaluate(*call_args, **kwargs):
        metrics = evaluate(*call_args, **kwargs)
        trainer.evaluated[trainer._trial.number] = metrics
        return metrics

    monkeypatch.setattr(trainer, "evaluate", recording_evaluate)
    return trainer


def search(trainer, hp_space, n_trials, sampler, **kwargs):
    """Run the search; returns the BestRun and optuna's record of every trial."""
    storage = optuna.storages.InMemoryStorage()
    best = trainer.hyperparameter_search(
        hp_space=hp_space, n_trials=n_trials, backend="optuna", sampler=sampler, storage=storage, study_name="s",
        **kwargs,
    )  # fmt: skip
    return best, optuna.load_study(study_name="s", storage=storage)


def test_each_trial_trains_with_its_own_loss_settings(tmp_path, monkeypatch):
    """The issue's search: γ (and b in the first trial only, and the learning rate) reach each trial's loss; the
    best run's parameters are those its model trained with; the trainer's own settings come back afterwards."""
    trainer = make_trainer(tmp_path, monkeypatch, save_strategy="steps", save_steps=3)

    def space(trial):
        params = {
            "gamma": trial.suggest_float("gamma", 0.1, 0.9),
            "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
        }
        if trial.number == 0:  # the next trials must not inherit it: each starts from the trainer's tvd_args
            params["min_weight"] = trial.suggest_float("min_weight", 0.4, 0.5)
        return params

    best, study = search(trainer, space, 3, optuna.samplers.RandomSampler(seed=0))
    evaluated = trainer.evaluated

    assert len(study.trials) == 3
    for trial in study.trials:
        gamma = trial.params["gamma"]
        min_weight = trial.params.get("min_weight", 0.2)
        expected = tvd_weight(PROBE, gamma, min_weight)
        steps = [weights for number, weights in trainer.seen if number == trial.number]
        assert len(steps) == 3, "every training step of the trial went through the loss"
        for weights in steps:
            torch.testing.assert_close(weights, expected)
        assert trainer.settings[trial.number] == pytest.approx((trial.params["learning_rate"], min_weight))
        recorded = trainer.tvd_trial_args[str(trial.number)]
        assert (recorded.gamma, recorded.min_weight) == (gamma, min_weight)
        # the checkpoint marker of the trial's run folder records the settings it was trained with
        marker = read_checkpoint_marker(os.path.join(tmp_path, "out", f"run-{trial.number}", "checkpoint-3"))
        assert marker["tvd_args"]["gamma"] == gamma and marker["tvd_args"]["min_weight"] == min_weight
        # the objective is the evaluation NLL of the trial (evaluated once, at its end: eval_strategy "no")
        assert evaluated[trial.number]["eval_gamma"] == pytest.approx(gamma)
        assert trial.value == evaluated[trial.number]["eval_nll"]
    best_trial = study.trials[int(best.run_id)]
    assert best.hyperparameters == best_trial.params
    assert best.objective == min(t.value for t in study.trials)
    trained_with = trainer.tvd_trial_args[best.run_id]
    assert trained_with.gamma == best.hyperparameters["gamma"]
    first_step = next(weights for number, weights in trainer.seen if number == best_trial.number)
    torch.testing.assert_close(first_step, tvd_weight(PROBE, trained_with.gamma, trained_with.min_weight))
    # after the search the trainer trains with its own settings again
    assert trainer.tvd_args == TVDArguments()
    assert trainer._tvd_terms(trainer.tvd_args.gamma)(PROBE)[0].tolist() == tvd_weight(PROBE, 1e-7, 0.2).tolist()


def test_default_objective_is_eval_nll_not_eval_loss(tmp_path, monkeypatch):
    """γ = 1 (DFT) trains less than γ = 0 (cross-entropy) on learnable data, yet its eval_loss is the smaller: the
    γ-CE objective of each γ is another function. The search ranks the trials by eval_nll and picks γ = 0."""
    trainer = make_trainer(tmp_path, monkeypatch, learnable=True, optim="sgd", learning_rate=0.5)
    grid = {"gamma": [1.0, 0.0]}
    best, study = search(trainer, lambda t: {"gamma": t.suggest_categorical("gamma", grid["gamma"])}, 2,
                         optuna.samplers.GridSampler(grid, seed=0))  # fmt: skip
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    metrics = {t.params["gamma"]: trainer.evaluated[t.number] for t in study.trials}
    assert {t.params["gamma"]: t.value for t in study.trials} == {g: m["eval_nll"] for g, m in metrics.items()}
    assert metrics[0.0]["eval_nll"] < metrics[1.0]["eval_nll"]
    assert best.hyperparameters == {"gamma": 0.0} and best.objective == metrics[0.0]["eval_nll"]
    # eval_loss (the stock objective when evaluation reports nothing else) would have picked γ = 1
    assert metrics[1.0]["eval_loss"] < metrics[0.0]["eval_loss"]


def test_metric_for_best_model_sets_objective_and_direction(tmp_path, monkeypatch):
    """metric_for_best_model="token_accuracy" (greater_is_better: True) is maximised; its value is the objective."""
    trainer = make_trainer(tmp_path, monkeypatch, learnable=True, optim="sgd", learning_rate=0.5,
                           tvd={"extra_metrics": True}, metric_for_best_model="token_accuracy")  # fmt: skip
    grid = {"gamma": [1.0, 0.0]}
    best, study = search(trainer, lambda t: {"gamma": t.suggest_categorical("gamma", grid["gamma"])}, 2,
                         optuna.samplers.GridSampler(grid, seed=0))  # fmt: skip
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    accuracy = {t.params["gamma"]: trainer.evaluated[t.number]["eval_token_accuracy"] for t in study.trials}
    assert {t.params["gamma"]: t.value for t in study.trials} == accuracy
    assert best.objective == max(accuracy.values())
    assert accuracy[best.hyperparameters["gamma"]] == best.objective


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"gama": 0.5}, r"'gama' \(did you mean 'gamma'"),
        ({"learning_rate": 1e-3, "min_wieght": 0.3}, r"'min_wieght' \(did you mean 'min_weight'"),
        ({"gamma": 1.5}, r"TVDArguments\.gamma"),
        ({"min_weight": -0.1}, r"TVDArguments\.min_weight"),
        ({"gamma_start": 0.5}, r"gamma_start.*gamma_schedule is 'constant'"),
        ({"loss_impl": "chunked"}, r"TVDArguments\.loss_impl chooses how the loss is computed"),
        ({"label_smoothing_factor": 0.1}, r"label_smoothing_factor is not applied by a TVD trainer"),
    ],
)
def test_bad_space_refused_before_training(tmp_path, monkeypatch, space, message):
    """An unknown name (with the close match), a bad value (naming its field), a TVDArguments field that is no
    loss hyperparameter: ValueError before any training step; the trainer keeps its settings."""
    trainer = make_trainer(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=message):
        trainer.hyperparameter_search(hp_space=lambda t: dict(space), n_trials=2, backend="optuna")
    assert trainer.seen == []
    assert trainer.tvd_args == TVDArguments()


def test_weight_rule_refuses_the_fields_it_replaces(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch, weight_rule=probability_power_rule(0.5))
    with pytest.raises(ValueError, match=r"weight_rule replaces the loss that gamma"):
        trainer.hyperparameter_search(hp_space=lambda t: {"gamma": 0.3}, n_trials=1, backend="optuna")
    assert trainer.seen == []


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ({"metric_for_best_model": "loss"}, {}, r"eval_loss, the γ-CE objective of each trial"),
        ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps"}, {},
         r"load_best_model_at_end sets metric_for_best_model='loss'"),
        ({"metric_for_best_model": "nll"}, {}, r"greater_is_better=True .* set greater_is_better=False"),
        ({}, {"direction": "maximize"}, r"direction='maximize', but the default objective eval_nll is lower"),
        ({"metric_for_best_model": "token_accuracy"}, {"direction": "minimize"}, r"eval_token_accuracy is higher"),
    ],
)  # fmt: skip
def test_contradictory_objective_refused(tmp_path, monkeypatch, args, kwargs, message):
    trainer = make_trainer(tmp_path, monkeypatch, **args)
    with pytest.raises(ValueError, match=message):
        trainer.hyperparameter_search(hp_space=lambda t: {"gamma": 0.3}, n_trials=1, backend="optuna", **kwargs)
    assert trainer.seen == []


def test_objective_needs_evaluation_data(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch, eval_data=False)
    with pytest.raises(ValueError, match=r"default objective \(eval_nll\) comes from evaluate\(\).*no eval_dataset"):
        trainer.hyperparameter_search(hp_space=lambda t: {"gamma": 0.3}, n_trials=1, backend="optuna")


def test_metric_evaluation_does_not_produce_is_refused_naming_those_it_does(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch, metric_for_best_model="bleu", max_steps=1)
    with pytest.raises(ValueError, match=r"the objective is eval_bleu, but evaluation produced .*eval_nll"):
        trainer.hyperparameter_search(hp_space=lambda t: {"gamma": 0.3}, n_trials=1, backend="optuna")
    assert trainer.tvd_args == TVDArguments()


def test_explicit_compute_objective_is_the_users(tmp_path, monkeypatch):
    """A compute_objective of one's own is used as given (direction defaults to minimize, as in transformers)."""
    trainer = make_trainer(tmp_path, monkeypatch, max_steps=1)
    best, study = search(trainer, lambda t: {"gamma": t.suggest_float("gamma", 0.2, 0.3)}, 1,
                         optuna.samplers.RandomSampler(seed=0), compute_objective=lambda m: m["eval_perplexity"])  # fmt: skip
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert best.objective == trainer.evaluated[0]["eval_perplexity"]


def test_dict_trials_of_other_backends(tmp_path, monkeypatch):
    """Ray and W&B hand the trial as a dict: it is split the same way (without needing either package here)."""
    trainer = make_trainer(tmp_path, monkeypatch)
    trainer.hp_search_backend = HPSearchBackend.RAY
    trainer._tvd_search_base, trainer.tvd_trial_args = trainer.tvd_args, {}
    monkeypatch.setattr(trainer, "_get_output_dir", lambda trial: os.path.join("out", "run-abc"))
    trial = {"gamma": 0.4, "learning_rate": 1e-3, "wandb": {}}
    trainer._hp_search_setup(trial)
    assert trainer._trial is trial
    assert trainer.tvd_args.gamma == 0.4 and trainer.args.learning_rate == 1e-3
    assert trainer.tvd_trial_args == {"run-abc": trainer.tvd_args}
    with pytest.raises(ValueError, match=r"did you mean 'learning_rate'"):
        trainer._hp_search_setup({"learning_rat": 1e-3})


def test_split_search_params():
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    assert split_search_params({"gamma": 0.1, "seed": 3}, args) == ({"seed": 3}, {"gamma": 0.1})
    assert set(TUNABLE_TVD_FIELDS) >= {"gamma", "min_weight", "label_smoothing", "focal_gamma", "gamma_schedule",
                                       "gamma_start", "gamma_schedule_ratio", "gamma_schedule_steps"}  # fmt: skip
    # TRL's SFTConfig has a loss_type of its own
    Both = dataclasses.make_dataclass("Both", [("loss_type", str, dataclasses.field(default="nll"))],
                                      bases=(TrainingArguments,))  # fmt: skip
    with pytest.raises(ValueError, match=r"'loss_type' is a field of both Both and TVDArguments"):
        split_search_params({"loss_type": "focal"}, Both(output_dir="unused", report_to="none", use_cpu=True))


def test_search_on_the_data_a_task_script_prepares(tmp_path):
    """The recipe of docs/TUNING.md ("From the scripts"): the task layer prepares data, tokenizer and options, a
    TVDTrainer with model_init searches γ on them."""
    from hf_tvd_loss.tasks import get_task
    from hf_tvd_loss.tasks.modeling import build_model_from_config
    from hf_tvd_loss.tasks.run import build, prepare

    prepared = prepare(get_task("language_modeling"), [
        "--output_dir", str(tmp_path / "search"), "--synthetic_train_examples", "16", "--synthetic_eval_examples",
        "4", "--max_steps", "2", "--report_to", "none", "--gamma", "0.1", "--min_weight", "0.0",
    ])  # fmt: skip
    built = build(prepared)
    task, tokenizer = prepared.task, built.tokenizer

    def model_init():
        model = build_model_from_config(task, prepared.config, tokenizer)
        task.configure_model(model, tokenizer, prepared.data_args, prepared.training_args)
        return model

    trainer = TVDTrainer(
        model_init=model_init, args=prepared.training_args, train_dataset=built.datasets["train"],
        eval_dataset=built.datasets["validation"], data_collator=built.trainer.data_collator,
        tvd_args=prepared.tvd_args,
    )  # fmt: skip
    grid = {"gamma": [0.0, 0.9]}
    best, study = search(trainer, lambda t: {"gamma": t.suggest_categorical("gamma", grid["gamma"])}, 2,
                         optuna.samplers.GridSampler(grid, seed=0))  # fmt: skip
    assert {trainer.tvd_trial_args[str(t.number)].gamma for t in study.trials} == {0.0, 0.9}
    assert best.objective == min(t.value for t in study.trials)
    assert trainer.tvd_args.gamma == 0.1 and trainer.tvd_args.min_weight == 0.0


def test_seq2seq_trainer_searches_the_loss_too(tmp_path, monkeypatch):
    """TVDSeq2SeqTrainer (a tiny T5): the trial's γ reaches its loss."""
    from transformers import Seq2SeqTrainingArguments

    from hf_tvd_loss import TVDSeq2SeqTrainer

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=2, report_to="none", use_cpu=True,
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = TVDSeq2SeqTrainer(
        model_init=lambda: tiny_model("t5"), args=args, train_dataset=tiny_dataset("t5", n=16),
        eval_dataset=tiny_dataset("t5", n=8, seed=1), data_collator=collator("t5"), tvd_args=TVDArguments(),
    )  # fmt: skip
    seen = []
    original = trainer_module.token_weighted_cross_entropy

    def recording(*call_args, **kwargs):
        if torch.is_grad_enabled():
            seen.append(call_args[2](PROBE)[0])
        return original(*call_args, **kwargs)

    monkeypatch.setattr(trainer_module, "token_weighted_cross_entropy", recording)
    best, study = search(trainer, lambda t: {"gamma": t.suggest_float("gamma", 0.3, 0.6)}, 1,
                         optuna.samplers.RandomSampler(seed=0))  # fmt: skip
    assert len(seen) == 2
    for weights in seen:
        torch.testing.assert_close(weights, tvd_weight(PROBE, best.hyperparameters["gamma"], 0.2))
    assert best.objective == study.trials[0].value
