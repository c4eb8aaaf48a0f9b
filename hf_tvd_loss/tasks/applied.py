"""Options the user asked for that the chosen optimizer or schedule would not apply are refused, before any work.

transformers reads ``--adam_beta2`` only for the Adam family, ``--warmup_steps`` only for schedules with a warm-up,
``--optim_args`` keys only where its handler for ``--optim`` passes them on, and ``--lr_scheduler_kwargs`` only
where ``get_scheduler`` forwards them; everywhere else the value is dropped without a word (``--optim sgd
--adam_beta2 0.98`` trains SGD). :func:`check_options_applied` does not keep a list of those cases: on a throwaway
parameter it builds what the options configure, the way ``Trainer`` builds it (``Trainer.get_optimizer_cls_and_
kwargs``, the optimizer class, ``get_scheduler``), and compares what was asked with what was built. An option the
user set (command line or YAML, ``given``) that did not reach the built object is refused, naming it and what the
chosen optimizer or schedule reads. Options left at their defaults are never refused.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from .checks import _first_line

if TYPE_CHECKING:
    from transformers import TrainingArguments

__all__ = ["check_options_applied", "optimizer_built_from", "schedule_arguments"]

# Steps of the throwaway schedule: enough that a warm-up ratio gives at least one step.
_PROBE_STEPS = 1000
_OPTIMIZER_OPTIONS = ("adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "optim_args")
_SCHEDULE_OPTIONS = ("warmup_steps", "lr_scheduler_kwargs")
# Optimizers transformers builds from the model's modules: not built here (see the module's docs).
_NEEDS_MODEL = ("galore", "apollo", "lomo", "adalomo")


def optimizer_built_from(training_args: TrainingArguments) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
    """``(optimizer class, the keyword arguments Trainer passes it, the built optimizer's defaults)`` for these
    arguments, built the way ``Trainer`` builds it, on one throwaway parameter; ``None`` where it is not built here
    (a package the optimizer needs is missing, which ``checks.check_options_take_effect`` names; a factory that
    transformers builds from the model's modules). Whatever transformers or the optimizer raises is one
    ``ValueError`` line naming ``--optim`` (and ``--optim_args``). The one place the optimizer is built at check time:
    ``checks.check_configured_objects`` and :func:`check_options_applied` both call it."""
    import torch
    from transformers import Trainer
    from transformers.trainer_optimizer import _parse_optim_args

    optim = str(getattr(training_args.optim, "value", training_args.optim))
    options = f"--optim {optim}" + (f" --optim_args {training_args.optim_args!r}" if training_args.optim_args else "")
    try:
        _parse_optim_args(training_args.optim_args)
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args)
    except ImportError:
        return None
    except Exception as err:  # noqa: BLE001  # transformers raises many types for bad --optim_args
        raise ValueError(f"{options}: {_first_line(err)}") from None
    if not isinstance(optimizer_cls, type) or not issubclass(optimizer_cls, torch.optim.Optimizer):
        return None  # a factory (layer-wise, GaLore targets): built on the real model only
    # Trainer puts weight_decay into the parameter groups, not the keyword arguments.
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": training_args.weight_decay}]
    try:
        optimizer = optimizer_cls(params, **kwargs)
    except TypeError as err:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ValueError(
            f"{options} ({optimizer_cls.__name__}) refuses the arguments built from these options ({given}): "
            f"{_first_line(err)}; remove the --optim_args key it does not take"
        ) from None
    except Exception as err:  # noqa: BLE001  # a bad value: ValueError, RuntimeError, ...
        raise ValueError(f"{options}: {_first_line(err)}") from None
    return optimizer_cls, dict(kwargs), dict(optimizer.defaults)


def schedule_arguments(training_args: TrainingArguments, optimizer: Any, steps: int = _PROBE_STEPS) -> dict[str, Any]:
    """The keyword arguments ``get_scheduler`` passes to the schedule function of ``--lr_scheduler_type`` (recorded
    on a throwaway optimizer: a schedule ignores what it is not passed), over ``steps`` training steps. What
    ``get_scheduler`` raises propagates (a ``TypeError`` for a ``--lr_scheduler_kwargs`` key the schedule does not
    take): the one place the schedule is built at check time, for ``checks.check_configured_objects`` and
    :func:`check_options_applied`, which word the error each for its own check."""
    from transformers import optimization

    name = optimization.SchedulerType(training_args.lr_scheduler_type)
    original = optimization.TYPE_TO_SCHEDULER_FUNCTION[name]
    received: dict[str, Any] = {}

    def recorder(*args: Any, **kwargs: Any) -> Any:
        received.update(kwargs)
        return original(*args, **kwargs)

    optimization.TYPE_TO_SCHEDULER_FUNCTION[name] = recorder
    try:
        optimization.get_scheduler(
            name,
            optimizer,
            num_warmup_steps=training_args.get_warmup_steps(steps),
            num_training_steps=steps,
            scheduler_specific_kwargs=dict(training_args.lr_scheduler_kwargs or {}),
        )
    finally:
        optimization.TYPE_TO_SCHEDULER_FUNCTION[name] = original
    return received


def _parameters(function: Any) -> str:
    names = [
        "its own keyword options" if p.kind is p.VAR_KEYWORD else name
        for name, p in inspect.signature(function).parameters.items()
        if name not in ("optimizer", "last_epoch")
    ]
    return ", ".join(names) if names else "nothing but the learning rate"


def _reads(defaults: dict[str, Any]) -> str:
    shown = [k for k in defaults if k not in ("foreach", "fused", "differentiable", "capturable", "maximize")]
    return ", ".join(shown)


def check_options_applied(training_args: TrainingArguments, given: frozenset[str] | set[str]) -> None:
    """Refuse (``ValueError``, one line) an optimizer or schedule option the user set that the optimizer or
    schedule built from ``training_args`` would not apply. ``given``: the options the user set."""
    from transformers.trainer_optimizer import _parse_optim_args

    if not (set(given) & {*_OPTIMIZER_OPTIONS, *_SCHEDULE_OPTIONS, "optim", "lr_scheduler_type"}):
        return  # nothing asked beyond the defaults, which transformers applies as it chooses
    optim = str(getattr(training_args.optim, "value", training_args.optim))
    if optim.startswith(_NEEDS_MODEL):
        return  # built from the model's modules (optim_target_modules): not comparable on a throwaway parameter
    built_from = optimizer_built_from(training_args)
    if built_from is None:
        return  # a missing package (checks.check_options_take_effect refuses that) or a factory built on the model
    optimizer_cls, kwargs, defaults = built_from
    import torch

    built = f"--optim {optim} ({optimizer_cls.__name__} reads {_reads(defaults)})"
    betas = kwargs.get("betas")
    for index, name in enumerate(("adam_beta1", "adam_beta2")):
        value = getattr(training_args, name)
        if name in given and not (isinstance(betas, (tuple, list)) and len(betas) > index and betas[index] == value):
            raise ValueError(f"--{name} {value} is not used by {built}; remove it or choose an Adam-type --optim")
    if "adam_epsilon" in given and kwargs.get("eps") != training_args.adam_epsilon:
        raise ValueError(
            f"--adam_epsilon {training_args.adam_epsilon} is not used by {built}; remove it (an eps of this optimizer "
            "goes in --optim_args where its handler passes it on)"
        )
    if "weight_decay" in given and training_args.weight_decay and "weight_decay" not in defaults:
        raise ValueError(f"--weight_decay {training_args.weight_decay} is not used by {built}; remove it")
    if "optim_args" in given and training_args.optim_args:
        for key, value in _parse_optim_args(training_args.optim_args).items():
            if key not in kwargs:
                raise ValueError(
                    f"--optim_args {key}={value} is not passed on by transformers for --optim {optim} (it passes "
                    f"{', '.join(sorted(kwargs))} to {optimizer_cls.__name__}); remove it"
                )
            if key in defaults and defaults[key] != kwargs[key]:
                raise ValueError(
                    f"--optim_args {key}={value} became {defaults[key]!r} in {optimizer_cls.__name__}; give a value "
                    "it takes as is"
                )

    if not (set(given) & {*_SCHEDULE_OPTIONS, "lr_scheduler_type"}):
        return
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=training_args.learning_rate)
    schedule = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
    from transformers import optimization

    reads = _parameters(optimization.TYPE_TO_SCHEDULER_FUNCTION[optimization.SchedulerType(schedule)])
    try:
        received = schedule_arguments(training_args, optimizer)
    except TypeError as err:  # a --lr_scheduler_kwargs key the schedule function does not take
        raise ValueError(
            f"--lr_scheduler_kwargs {training_args.lr_scheduler_kwargs} is not accepted by --lr_scheduler_type "
            f"{schedule} ({err}); it reads {reads}"
        ) from None
    if "warmup_steps" in given and training_args.warmup_steps and "num_warmup_steps" not in received:
        raise ValueError(
            f"--warmup_steps {training_args.warmup_steps} is not used by --lr_scheduler_type {schedule} (it reads "
            f"{reads}); remove it or choose a schedule with a warm-up (e.g. constant_with_warmup, linear)"
        )
    for key, value in (training_args.lr_scheduler_kwargs or {}).items():
        if "lr_scheduler_kwargs" in given and key not in received:
            raise ValueError(
                f"--lr_scheduler_kwargs {key}={value!r} is not passed on by transformers to --lr_scheduler_type "
                f"{schedule} (it reads {reads}); remove it"
            )
