"""``TVDArguments``: the loss's hyperparameters, parsed by ``HfArgumentParser`` next to ``TrainingArguments``.

This module does not import transformers either: the dataclass only uses ``field(metadata={"help": ...})``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from .ops.common import check_number, validate_loss_hyperparameters
from .ops.kernels import Impl

__all__ = [
    "EFFECTIVE_DEFAULTS",
    "LOSS_TYPE_FIELDS",
    "GammaSchedule",
    "LossType",
    "NonFinitePolicy",
    "TVDArguments",
    "applied_loss_fields",
    "gamma_at_step",
]

# Each option set is written once, as a Literal; the tuples the checks and the parser's choices use derive from it.
GammaSchedule = Literal["constant", "linear", "cosine"]
_SCHEDULES: tuple[str, ...] = get_args(GammaSchedule)
LossType = Literal["gamma_ce", "focal", "gce"]
_LOSS_TYPES: tuple[str, ...] = get_args(LossType)
NonFinitePolicy = Literal["error", "skip", "ignore"]
_NONFINITE: tuple[str, ...] = get_args(NonFinitePolicy)
LossImpl = Literal["logits", "chunked"]
_LOSS_IMPLS: tuple[str, ...] = get_args(LossImpl)
ChunkedBackend = Impl  # the backends of ops.linear (impl=...), defined in ops/kernels.py
_BACKENDS: tuple[str, ...] = get_args(ChunkedBackend)
Normalization = Literal["token", "sequence"]
_NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
_P = "TVDArguments."


@dataclass
class TVDArguments:
    """Hyperparameters of the token-level γ-CE (TaiLr) loss.

    The paper's settings (official launch scripts): language modelling γ=1e-7, b=0.2, ε=0;
    translation γ=0.1, b=0.3, ε=0.1; summarization γ=0.8, b=0.2, ε=0.1.

    Baselines, with the same normalisation and logging: cross-entropy is ``gamma=0`` (b=0), label smoothing
    ``gamma=0, label_smoothing=ε``, DFT ``gamma=1``, focal loss ``loss_type="focal"`` with ``focal_gamma``,
    generalized cross-entropy (the robust loss of the noisy-label literature) ``loss_type="gce"`` with ``gce_q``.
    """

    loss_type: LossType = field(
        default="gamma_ce",
        metadata={
            "help": "'gamma_ce' (TaiLr γ-CE; gamma=0 is cross-entropy, gamma=1 is DFT), 'focal' (token-level "
            "focal loss baseline, see focal_gamma/focal_alpha) or 'gce' (generalized cross-entropy (1-p^q)/q, "
            "Zhang & Sabuncu 2018, the robust-loss baseline for noisy labels; see gce_q). Each type's options "
            "are refused beside another type.",
            "choices": list(_LOSS_TYPES),
        },
    )

    # Defaults (γ = 1e-7, b = 0.2): TaiLr's language-modelling setting, the one setting the project's studies found
    # safe for a user who passes nothing: it trains like cross-entropy from scratch and on clean data (3 seeds, all
    # intervals include 0) and helped a pretrained model on 10 % and 30 % noisy targets (docs/LOSS_COMPARISON.md).
    # The former default γ = 0.1, b = 0 barely trained a model built from a config (grad_norm 0.0002 vs 1.1).
    gamma: float = field(
        default=1e-7,
        metadata={
            "help": "γ in [0, 1]: 0 is cross-entropy, 1 is DFT (weight = p). The paper uses 1e-7 for language "
            "modelling, 0.1 for translation, 0.8 for summarization. With a schedule this is the final value. "
            "Default 1e-7 (with min_weight 0.2): TaiLr's LM setting, measured safe from scratch and when fine-tuning."
        },
    )
    min_weight: float = field(
        default=0.2,
        metadata={
            "help": "Floor b in [0, 1] of the per-token weight p/(γ+(1-γ)p); TaiLr uses 0.2-0.3 so that "
            "low-probability targets still get some gradient. 0 gives the exact closed-form γ-CE gradient."
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Label smoothing ε in [0, 1), mixed in unweighted as in the official criterion. Use this "
            "instead of TrainingArguments.label_smoothing_factor."
        },
    )
    gamma_schedule: GammaSchedule = field(
        default="constant",
        metadata={
            "help": "How γ moves during training: 'constant' (γ throughout), or 'linear'/'cosine' from "
            "gamma_start to γ over the first part of training, then γ. A function of the global step, so it "
            "is the same after resuming from a checkpoint.",
            "choices": list(_SCHEDULES),
        },
    )
    # The options below apply under one loss type or schedule only. Their default None means "not given": given
    # where they do not apply, they are refused (a value equal to the effective default included); not given where
    # they apply, __post_init__ sets the effective default (EFFECTIVE_DEFAULTS); where they do not apply they stay
    # None, so the recorded settings show what the loss used.
    gamma_start: float | None = field(
        default=None,
        metadata={
            "help": "γ at step 0 of the 'linear' and 'cosine' schedules (refused with 'constant'). Not given: 0.0 "
            "(start as cross-entropy)."
        },
    )
    gamma_schedule_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Fraction in (0, 1] of the total optimisation steps over which γ moves from gamma_start to γ "
            "(refused with 'constant' and beside gamma_schedule_steps). Not given: 1.0 unless gamma_schedule_steps "
            "is set."
        },
    )
    gamma_schedule_steps: int | None = field(
        default=None,
        metadata={
            "help": "Number of optimisation steps over which γ moves from gamma_start to γ, instead of "
            "gamma_schedule_ratio (refused with 'constant')."
        },
    )

    focal_gamma: float | None = field(
        default=None,
        metadata={
            "help": "Focusing parameter f ≥ 0 of loss_type='focal': loss = -α(1-p)^f log p (0 = CE); refused with "
            "another loss_type. Not given: 2.0."
        },
    )
    focal_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Scale α > 0 of loss_type='focal' (a scalar: per-class α makes no sense over a vocabulary); "
            "refused with another loss_type. Not given: 1.0."
        },
    )

    gce_q: float | None = field(
        default=None,
        metadata={
            "help": "Exponent q in (0, 1] of loss_type='gce': loss = (1 - p^q)/q, gradient p^q·∇(-log p) (q → 0 "
            "tends to cross-entropy, q = 1 is 1 - p with DFT's gradient); refused with another loss_type. Not "
            "given: 0.7, the paper's choice."
        },
    )

    loss_impl: LossImpl = field(
        default="logits",
        metadata={
            "help": "'logits': the model computes its [tokens, vocab] logits and the loss runs on them. 'chunked': "
            "the loss is computed from the final hidden states and the output-embedding weight a chunk of tokens "
            "at a time, inside the output head's own forward (so FSDP2 and ZeRO-3 have its weight gathered), never "
            "materialising the [tokens, vocab] logits, in training and in loss-only evaluation. Any model whose "
            "output head is a linear layer qualifies; it is checked against the logits path at first use, and a "
            "model that fails the check is refused with the reason (never a silent fallback).",
            "choices": list(_LOSS_IMPLS),
        },
    )
    chunked_backend: ChunkedBackend = field(
        default="torch",
        metadata={
            "help": "Kernel for loss_impl='chunked': 'torch' (pure PyTorch, CPU and GPU; the default), 'cce' "
            "(cut-cross-entropy, approximate gradients through its filtering) or 'liger' (liger-kernel), CUDA "
            "only; 'torch_linear_ce' (PyTorch's own chunked torch.nn.functional.linear_cross_entropy, torch >= "
            "2.13, CPU and GPU, no soft-capping; on CPU 2.7x the time of 'torch', 0.57x its memory); 'auto' picks liger-kernel on "
            "CUDA when installed and applicable, else 'torch' (cut-cross-entropy and torch_linear_ce only by name). "
            "The kernels are opt-in: see BENCHMARKS.md for what was executed and measured where.",
            "choices": list(_BACKENDS),
        },
    )
    normalization: Normalization = field(
        default="token",
        metadata={
            "help": "Denominator of the loss: 'token' (Σ token losses / scored tokens, the default) or 'sequence' "
            "(Σ token losses / sequences with at least one scored token, fairseq's --sentence-avg). Both are counted "
            "over the whole gradient-accumulation step and all processes.",
            "choices": list(_NORMALIZATIONS),
        },
    )
    extra_metrics: bool = field(
        default=False,
        metadata={
            "help": "Also log token_accuracy (argmax = target), entropy (mean predictive entropy, nats) and the "
            "token-level calibration ece / confidence (15 equal-width bins of top-1 probability), in training "
            "and evaluation, token-weighted over all processes. Computed a chunk at a time inside the loss, in "
            "both loss_impl paths (never from full logits); off by default because it costs a pass over each "
            "chunk of logits (measured in BENCHMARKS.md). tvd_weight_floor_fraction (share of tokens whose "
            "weight is clamped at min_weight) is logged whenever min_weight > 0, at no measurable cost."
        },
    )
    nonfinite_policy: NonFinitePolicy = field(
        default="error",
        metadata={
            "help": "What to do when an optimisation step's gradients are NaN/inf (e.g. a poisoned batch): "
            "'error' stops before the update, naming the step (weights unchanged, checkpoints intact); 'skip' "
            "skips that update and counts it in the logs (nonfinite_skipped_steps); 'ignore' does no check "
            "(stock behaviour). The check reuses the gradient norm Trainer computes for each step.",
            "choices": list(_NONFINITE),
        },
    )

    allow_loss_change_on_resume: bool = field(
        default=False,
        metadata={
            "help": "Resuming from a checkpoint written with other loss settings (loss_type, gamma, min_weight, "
            "label_smoothing, the gamma schedule, focal options, gce_q, normalization) is refused before training, naming "
            "what differs: the resumed run would otherwise optimise another objective than the one it started "
            "with. Set this to continue deliberately with the new settings (e.g. cross-entropy first, then γ-CE). "
            "loss_impl, chunked_backend, extra_metrics and nonfinite_policy may always change."
        },
    )

    def __post_init__(self) -> None:
        self.validate()
        # What applies and was not given takes its effective default; what does not apply stays None.
        for name in self.applied_fields():
            if getattr(self, name) is None and name in EFFECTIVE_DEFAULTS:
                setattr(self, name, EFFECTIVE_DEFAULTS[name])

    def validate(self) -> None:
        """Check every field and their combinations; ``ValueError`` names the field (``TVDArguments.gamma``).

        Run at construction and again where the arguments are used (the trainers when training or evaluation
        starts, :class:`~hf_tvd_loss.TVDLoss` when a field changed since it was built), so a field changed after
        construction (``args.gamma = 1.5``) is refused like one given to the constructor."""
        if not isinstance(self.extra_metrics, bool):
            raise ValueError(f"TVDArguments.extra_metrics must be a bool, got {self.extra_metrics!r}")
        for name, allowed in (
            ("loss_impl", _LOSS_IMPLS),
            ("chunked_backend", _BACKENDS),
            ("normalization", _NORMALIZATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TVDArguments.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.allow_loss_change_on_resume, bool):
            raise ValueError(
                f"TVDArguments.allow_loss_change_on_resume must be a bool, got {self.allow_loss_change_on_resume!r}"
            )
        if self.nonfinite_policy not in _NONFINITE:
            raise ValueError(
                f"TVDArguments.nonfinite_policy must be one of {list(_NONFINITE)}, got {self.nonfinite_policy!r}"
            )
        if self.loss_type not in _LOSS_TYPES:
            raise ValueError(f"TVDArguments.loss_type must be one of {list(_LOSS_TYPES)}, got {self.loss_type!r}")
        validate_loss_hyperparameters(self.gamma, self.min_weight, self.label_smoothing, prefix="TVDArguments.")
        check_number("focal_gamma", self.focal_gamma, low=0.0, allow_none=True, prefix=_P)
        check_number("focal_alpha", self.focal_alpha, low=0.0, low_open=True, allow_none=True, prefix=_P)
        check_number("gce_q", self.gce_q, low=0.0, low_open=True, high=1.0, allow_none=True, prefix=_P)
        if self.gamma_schedule not in _SCHEDULES:
            raise ValueError(
                f"TVDArguments.gamma_schedule must be one of {list(_SCHEDULES)}, got {self.gamma_schedule!r}"
            )
        check_number("gamma_start", self.gamma_start, low=0.0, high=1.0, allow_none=True, prefix=_P)
        ratio = self.gamma_schedule_ratio
        check_number("gamma_schedule_ratio", ratio, low=0.0, low_open=True, high=1.0, allow_none=True, prefix=_P)
        check_number(
            "gamma_schedule_steps", self.gamma_schedule_steps, low=1, integer=True, allow_none=True, prefix=_P
        )
        # Options the chosen loss would not apply are refused (accepted and ignored before: round-3 hostile run).
        self._refuse_other_loss_types_fields()
        # Options the chosen schedule would not apply are refused (they were once accepted and ignored).
        if self.gamma_schedule == "constant":
            ignored = self.changed_fields(_SCHEDULE_FIELDS)
            if ignored:
                raise ValueError(
                    f"TVDArguments: {', '.join(ignored)} set, but gamma_schedule is 'constant' (γ = {self.gamma} "
                    "from the first step), which does not use them: pass gamma_schedule='linear' or 'cosine', or "
                    "remove them"
                )
        elif self.gamma_schedule_steps is not None and self.gamma_schedule_ratio is not None:
            raise ValueError(
                "TVDArguments: gamma_schedule_steps and gamma_schedule_ratio both set; the steps would win and the "
                "ratio be ignored: pass one of them"
            )

    def applied_fields(self) -> tuple[str, ...]:
        """The fields of :data:`LOSS_TYPE_FIELDS` that this loss type and γ schedule use (the others are None)."""
        return applied_loss_fields(self.loss_type, self.gamma_schedule, self.gamma_schedule_steps)

    def _refuse_other_loss_types_fields(self) -> None:
        """``ValueError`` naming the fields of the other loss types (:data:`LOSS_TYPE_FIELDS`) set beside this one."""
        owners = {
            other: names
            for other, fields in LOSS_TYPE_FIELDS.items()
            if other != self.loss_type and (names := self.changed_fields(fields))
        }
        if not owners:
            return
        ignored = [f"{name}={getattr(self, name)!r}" for names in owners.values() for name in names]
        pronoun = "them" if len(ignored) > 1 else "it"
        if len(owners) == 1:
            (other,) = owners
            users, fix = f"loss_type={other!r} does", f"remove {pronoun}, or choose loss_type={other!r}"
        else:
            users = "; ".join(f"{', '.join(names)}: loss_type={other!r}" for other, names in owners.items())
            fix = f"remove {pronoun}"
        raise ValueError(
            f"TVDArguments: {', '.join(ignored)} set, but loss_type={self.loss_type!r} does not use {pronoun} "
            f"({users}): {fix}"
        )

    def changed_fields(self, names: Sequence[str]) -> list[str]:
        """The fields among ``names`` set to something else than their defaults (in the order of ``names``): for
        the fields whose default is None (not given), every given value, the effective default included."""
        return [name for name in names if getattr(self, name) != _FIELD_DEFAULTS[name]]

    def schedule_length(self, max_steps: int) -> int:
        """Steps over which γ moves, given the run's total optimisation steps."""
        if self.gamma_schedule_steps is not None:
            return self.gamma_schedule_steps
        ratio = self.gamma_schedule_ratio if self.gamma_schedule_ratio is not None else 1.0  # constant: unused
        return max(1, math.ceil(ratio * max(max_steps, 1)))

    def gamma_at(self, step: int, max_steps: int) -> float:
        """γ at a global optimisation step (see :func:`gamma_at_step`)."""
        if self.gamma_schedule == "constant":
            return self.gamma
        return gamma_at_step(
            step,
            gamma=self.gamma,
            schedule=self.gamma_schedule,
            gamma_start=self.gamma_start,
            num_steps=self.schedule_length(max_steps),
        )


def gamma_at_step(step: int, *, gamma: float, schedule: str, gamma_start: float, num_steps: int) -> float:
    """γ at optimisation step ``step``: ``gamma_start`` at 0, ``gamma`` from ``num_steps`` on.

    ``linear``: straight line; ``cosine``: ``γ_end + (γ_start - γ_end)·(1 + cos(π·t))/2`` with ``t = step/num_steps``.
    """
    if schedule == "constant":
        return gamma
    progress = min(max(step, 0) / max(num_steps, 1), 1.0)
    if schedule == "linear":
        return gamma_start + (gamma - gamma_start) * progress
    if schedule == "cosine":
        return gamma + (gamma_start - gamma) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown gamma schedule {schedule!r}; expected one of {list(_SCHEDULES)}")


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TVDArguments)}
# The fields each loss type reads; the other type's fields are refused when set (TVDArguments.__post_init__).
_GAMMA_FIELDS = (
    "gamma",
    "min_weight",
    "gamma_schedule",
    "gamma_start",
    "gamma_schedule_ratio",
    "gamma_schedule_steps",
)
_FOCAL_FIELDS = ("focal_gamma", "focal_alpha")
_GCE_FIELDS = ("gce_q",)
# The fields only one loss type reads, by loss type (every LossType has an entry, possibly empty).
LOSS_TYPE_FIELDS: dict[str, tuple[str, ...]] = {"gamma_ce": _GAMMA_FIELDS, "focal": _FOCAL_FIELDS, "gce": _GCE_FIELDS}
# The value a field whose default is None takes where it applies and was not given (documented in its help).
EFFECTIVE_DEFAULTS: dict[str, float] = {
    "gamma_start": 0.0,
    "gamma_schedule_ratio": 1.0,
    "focal_gamma": 2.0,
    "focal_alpha": 1.0,
    "gce_q": 0.7,
}
_SCHEDULE_FIELDS = ("gamma_start", "gamma_schedule_ratio", "gamma_schedule_steps")


def applied_loss_fields(loss_type: str, gamma_schedule: str, gamma_schedule_steps: int | None) -> tuple[str, ...]:
    """The fields of :data:`LOSS_TYPE_FIELDS` that a loss type and γ schedule use: the loss type's own, without the
    schedule's options under a constant schedule, and without ``gamma_schedule_ratio`` when the steps are given.
    (Also reads the settings a checkpoint recorded: :func:`~hf_tvd_loss.checkpoints.check_resume_loss_settings`.)"""
    fields = LOSS_TYPE_FIELDS.get(loss_type, ())
    if gamma_schedule == "constant":
        return tuple(name for name in fields if name not in _SCHEDULE_FIELDS)
    if gamma_schedule_steps is not None:
        return tuple(name for name in fields if name != "gamma_schedule_ratio")
    return fields
