"""``Trainer.hyperparameter_search`` over the loss: a search space may name ``TVDArguments`` fields.

The stock search sets each name of a trial's space on ``TrainingArguments`` and only warns about the others, so a
space with ``gamma`` trained every trial with the trainer's own γ while the best run reported a γ no trial used.
Its default objective, ``eval_loss`` (or the sum of every metric), is the γ-CE objective of the trial's own γ: a
different function for each γ, which cannot rank γ values. :class:`HyperparameterSearchMixin` (a base of the TVD
trainers) changes both:

* Each trial's names are split: ``TrainingArguments`` fields go the stock way; the loss's fields
  (:data:`TUNABLE_TVD_FIELDS`) replace those of the trainer's own ``tvd_args`` (a fresh copy for each trial, never
  the previous trial's), checked as any :class:`~hf_tvd_loss.TVDArguments` is, and the loss the trainer computes
  is rebuilt from them. Any other name is refused with the closest known names, before the trial trains.
* The default objective is ``eval_nll`` (minimised), or ``eval_<metric_for_best_model>`` in the direction
  ``greater_is_better`` says; never ``eval_loss``. A ``direction`` that contradicts it is refused.

What each trial trained with: ``trainer.tvd_trial_args[run_id]`` (``BestRun.run_id`` for optuna), the
``tvd_args`` of its checkpoints' markers and its logged ``gamma``. After the search the trainer's ``tvd_args`` is
its own again. How to use it: ``docs/TUNING.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any

from .args import TVDArguments
from .checkpoints import _LOSS_DEFINING

__all__ = [
    "TUNABLE_TVD_FIELDS",
    "HyperparameterSearchMixin",
    "MetricObjective",
    "default_objective_metric",
    "split_search_params",
    "trial_tvd_args",
]

# The TVDArguments fields a search may tune: those that define the objective. The others choose how it is computed
# or logged (loss_impl, chunked_backend, extra_metrics, nonfinite_policy, allow_loss_change_on_resume).
TUNABLE_TVD_FIELDS: tuple[str, ...] = _LOSS_DEFINING
_TVD_FIELDS = tuple(f.name for f in dataclasses.fields(TVDArguments))
# Metrics of the TVD trainers' evaluation whose better direction is known, for the greater_is_better check.
_LOWER_IS_BETTER = ("nll", "perplexity", "ece")
_HIGHER_IS_BETTER = ("token_accuracy", "accuracy")


def split_search_params(params: Mapping[str, Any], training_args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a trial's hyperparameters into ``TrainingArguments`` updates and ``TVDArguments`` updates.

    ``ValueError`` for a name that is a field of neither (with the closest known names), for a ``TVDArguments``
    field that is no hyperparameter of the loss, and for a name both classes have (e.g. ``SFTConfig.loss_type``).
    Also useful on ``BestRun.hyperparameters`` to train the best run's settings again.
    """
    training_fields = {f.name for f in dataclasses.fields(training_args)}
    args_name = type(training_args).__name__
    training: dict[str, Any] = {}
    tvd: dict[str, Any] = {}
    unknown = []
    for name, value in params.items():
        in_training, in_tvd = name in training_fields, name in _TVD_FIELDS
        if in_training and in_tvd:
            raise ValueError(
                f"hyperparameter search: {name!r} is a field of both {args_name} and TVDArguments, so the search "
                f"space cannot say which it sets; tune the other one's options, or set {name} outside the search"
            )
        if in_tvd and name not in TUNABLE_TVD_FIELDS:
            raise ValueError(
                f"hyperparameter search: TVDArguments.{name} chooses how the loss is computed or logged, not the "
                f"loss itself: set it in tvd_args. The loss fields a search may tune: {', '.join(TUNABLE_TVD_FIELDS)}"
            )
        if in_tvd:
            tvd[name] = value
        elif in_training:
            training[name] = value
        else:
            unknown.append(name)
    if unknown:
        known = sorted(training_fields | set(TUNABLE_TVD_FIELDS))
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=3)
            hints.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(
            f"hyperparameter search: {', '.join(hints)} {'is' if len(unknown) == 1 else 'are'} neither a "
            f"{args_name} field nor a TVDArguments field, so the trial would not apply "
            f"{'it' if len(unknown) == 1 else 'them'}: name fields of either (the loss's: "
            f"{', '.join(TUNABLE_TVD_FIELDS)})"
        )
    return training, tvd


def trial_tvd_args(base: TVDArguments, updates: Mapping[str, Any], weight_rule: Any = None) -> TVDArguments:
    """``base`` with a trial's loss hyperparameters, checked by ``TVDArguments`` (a bad value is refused naming its
    field); with a custom ``weight_rule`` the fields it replaces may not be tuned."""
    if weight_rule is not None:
        from .trainer import _RULE_FIELDS  # the fields a custom rule replaces (check_weight_rule); trainer imports us

        replaced = [name for name in updates if name in _RULE_FIELDS]
        if replaced:
            raise ValueError(
                f"hyperparameter search: the trainer's weight_rule replaces the loss that {', '.join(replaced)} "
                "would choose, so tuning them would change nothing: remove them from the search space (the rule "
                "still takes label_smoothing and normalization)"
            )
    if not updates:
        return base
    try:
        return dataclasses.replace(base, **updates)
    except ValueError as exc:
        raise ValueError(f"hyperparameter search, trial values {dict(updates)!r}: {exc}") from exc


def default_objective_metric(training_args: Any) -> tuple[str, str]:
    """The metric the default objective reads, and its direction: ``eval_nll`` (minimise), or
    ``eval_<metric_for_best_model>`` (maximise when ``greater_is_better``). ``eval_loss`` is refused: its value is
    the γ-CE objective of each trial's own loss settings, not comparable across trials that tune them."""
    name = getattr(training_args, "metric_for_best_model", None)
    if not name:
        return "eval_nll", "minimize"
    metric = name if name.startswith("eval_") else f"eval_{name}"
    bare = metric.removeprefix("eval_")
    if bare == "loss":
        raise ValueError(
            f"hyperparameter search: metric_for_best_model={name!r} would rank the trials by eval_loss, the γ-CE "
            "objective of each trial's own loss settings (a different function for each γ, b, ε), which cannot "
            "compare them (load_best_model_at_end sets metric_for_best_model='loss' when it is unset). Set "
            "metric_for_best_model='nll' (and greater_is_better=False), name a task metric, or pass compute_objective"
        )
    greater = bool(getattr(training_args, "greater_is_better", False))
    if (greater and bare in _LOWER_IS_BETTER) or (not greater and bare in _HIGHER_IS_BETTER):
        raise ValueError(
            f"hyperparameter search: metric_for_best_model={name!r} is {'lower' if greater else 'higher'} when "
            f"better, but greater_is_better={greater} (transformers sets it True for any name not ending in "
            f"'loss'), so the search would pick the worst trial: set greater_is_better={not greater}"
        )
    return metric, "maximize" if greater else "minimize"


class MetricObjective:
    """The objective of a trial: one metric of ``evaluate()``; a metric the evaluation does not produce is refused,
    naming the ones it does. A class (not a closure) so that Ray can pickle it."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def __call__(self, metrics: Mapping[str, float]) -> float:
        if self.metric not in metrics:
            produced = sorted(k for k in metrics if k.startswith("eval_"))
            raise ValueError(
                f"hyperparameter search: the objective is {self.metric}, but evaluation produced "
                f"{', '.join(produced)}; set metric_for_best_model to one of these (without or with eval_), "
                "or pass compute_objective"
            )
        return float(metrics[self.metric])

    def __repr__(self) -> str:
        return f"MetricObjective({self.metric!r})"


class HyperparameterSearchMixin:
    """``hyperparameter_search`` that tunes the loss too (see the module). A base of the TVD trainers, before the
    ``Trainer`` class: ``class T(TVDLossMixin, HyperparameterSearchMixin, CheckpointSafetyMixin, Trainer)``.

    It reads ``tvd_args`` and ``tvd_weight_rule`` and calls ``_tvd_use_args`` of :class:`~hf_tvd_loss.TVDLossMixin`.
    """

    def hyperparameter_search(
        self,
        hp_space: Callable[[Any], dict[str, Any]] | None = None,
        compute_objective: Callable[[dict[str, float]], float] | None = None,
        n_trials: int = 20,
        direction: str | list[str] | None = None,
        backend: Any = None,
        hp_name: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ):  # type: ignore[no-untyped-def]
        """The stock ``Trainer.hyperparameter_search``, whose space may also name the loss fields of
        ``TVDArguments`` (:data:`TUNABLE_TVD_FIELDS`), and whose default objective is ``eval_nll`` or
        ``eval_<metric_for_best_model>`` (the ``direction`` then follows from it; a contradictory one is refused).
        With ``compute_objective`` given, ``direction`` defaults to ``"minimize"`` as in transformers."""
        if compute_objective is None:
            metric, expected = default_objective_metric(self.args)
            if direction is not None and direction != expected:
                raise ValueError(
                    f"hyperparameter search: direction={direction!r}, but the default objective {metric} is "
                    f"{'lower' if expected == 'minimize' else 'higher'} when better (direction={expected!r}); "
                    "leave direction out, or pass compute_objective for another objective"
                )
            if getattr(self, "eval_dataset", None) is None:
                raise ValueError(
                    f"hyperparameter search: the default objective ({metric}) comes from evaluate(), and the "
                    "trainer has no eval_dataset: pass eval_dataset (data the trials do not train on)"
                )
            compute_objective, direction = MetricObjective(metric), expected
        elif direction is None:
            direction = "minimize"
        base = self.tvd_args  # type: ignore[attr-defined]
        self._tvd_search_base = base
        self.tvd_trial_args: dict[str, TVDArguments] = {}
        try:
            return super().hyperparameter_search(  # type: ignore[misc]
                hp_space=hp_space,
                compute_objective=compute_objective,
                n_trials=n_trials,
                direction=direction,
                backend=backend,
                hp_name=hp_name,
                **kwargs,
            )
        finally:  # the trainer trains with its own settings again, not the last trial's
            self._tvd_search_base = None
            self._tvd_use_args(base)  # type: ignore[attr-defined]

    def _hp_search_setup(self, trial: Any) -> None:
        from transformers.trainer_utils import HPSearchBackend

        backend = self.hp_search_backend  # type: ignore[attr-defined]
        if backend is None or trial is None:
            return super()._hp_search_setup(trial)  # type: ignore[misc]
        if backend == HPSearchBackend.OPTUNA:
            params = self.hp_space(trial)  # type: ignore[attr-defined]
        else:  # Ray and W&B hand the trial's values as a dict
            params = {k: v for k, v in dict(trial).items() if k != "wandb"}
        training, tvd = split_search_params(params, self.args)  # type: ignore[attr-defined]
        if training.get("label_smoothing_factor"):  # refused in __init__ too: the γ-CE loss would not apply it
            raise ValueError(
                "hyperparameter search: TrainingArguments.label_smoothing_factor is not applied by a TVD trainer, "
                "whose loss takes TVDArguments.label_smoothing (combined with the γ-CE term as in TaiLr): tune "
                "label_smoothing instead"
            )
        base = getattr(self, "_tvd_search_base", None) or self.tvd_args  # type: ignore[attr-defined]
        tvd_args = trial_tvd_args(base, tvd, self.tvd_weight_rule)  # type: ignore[attr-defined]
        self._tvd_use_args(tvd_args)  # type: ignore[attr-defined]
        if backend == HPSearchBackend.OPTUNA:
            # The stock setup calls hp_space(trial) again: give it the TrainingArguments part alone.
            hp_space = self.hp_space  # type: ignore[has-type]
            self.hp_space = lambda _trial: dict(training)
            try:
                super()._hp_search_setup(trial)  # type: ignore[misc]
            finally:
                self.hp_space = hp_space
            run_id = str(trial.number)
        else:
            super()._hp_search_setup(training)  # type: ignore[misc]
            self._trial = trial
            run_id = os.path.basename(self._get_output_dir(trial))  # type: ignore[attr-defined]
        records = getattr(self, "tvd_trial_args", None)
        if isinstance(records, dict):
            records[run_id] = tvd_args
