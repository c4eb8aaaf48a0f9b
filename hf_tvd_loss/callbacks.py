"""The non-finite step guard, a ``TrainerCallback`` for any ``transformers.Trainer``.

:class:`NonFiniteGuard`: ``Trainer(..., callbacks=[NonFiniteGuard("skip")])``. Just before each optimizer step it
checks the step's gradients (and, when told by the trainer, its loss) and either stops with
:class:`NonFiniteLossError` before the update or skips the update. The TVD trainers add it from
``TVDArguments.nonfinite_policy``. Checkpoint safety is :mod:`hf_tvd_loss.checkpoints`; its names are also
importable from here, where they used to live.
"""

from __future__ import annotations

import math
from typing import Any, get_args

import torch
from torch import nn
from transformers import TrainerCallback

from .args import NonFinitePolicy

__all__ = [
    "CHECKPOINT_COMPLETE_MARKER",
    "CheckpointSafetyMixin",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "checkpoint_folders",
    "checkpoint_is_complete",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "last_usable_checkpoint",
    "read_checkpoint_marker",
    "resolve_resume_checkpoint",
]

_POLICIES: tuple[str, ...] = get_args(NonFinitePolicy)


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradients and the policy is ``"error"``."""


# ---------------------------------------------------------------------------------------------- non-finite guard
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2 gradients are sharded DTensors


class NonFiniteGuard(TrainerCallback):
    """Stops (``"error"``) or skips (``"skip"``) an optimisation step whose gradients or loss are NaN/inf.

    Runs in ``on_pre_optimizer_step``, after gradient clipping and before ``optimizer.step()``. A skipped step
    sets every gradient to None, so the optimizer leaves the weights (and its own state) untouched; the learning
    rate schedule still advances. All processes take the same decision (the flag is all-reduced). Under DeepSpeed
    the engine updates the weights inside ``backward``, before this hook: ``"error"`` still stops the run at that
    step, and ``"skip"`` is refused when training starts.

    A trainer that already has the step's global gradient norm (the TVD trainers keep Trainer's) passes it with
    :meth:`set_grad_norm`, saving a pass over the gradients; a loss computed by the trainer goes through
    :meth:`observe_loss`.
    """

    def __init__(self, policy: NonFinitePolicy = "error") -> None:
        if policy not in _POLICIES:
            allowed = " or ".join((", ".join(map(repr, _POLICIES[:-1])), repr(_POLICIES[-1])))
            raise ValueError(f"NonFiniteGuard policy must be {allowed}, got {policy!r}")
        self.policy = policy
        self.skipped_steps = 0
        self._grad_norm: float | None = None
        self._loss_finite: torch.Tensor | None = None

    def set_grad_norm(self, norm: Any) -> None:
        self._grad_norm = None if norm is None else float(norm)

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Record whether a micro-batch loss is finite (kept on the device: no host synchronisation here)."""
        if self.policy == "ignore":
            return
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.skipped_steps = 0
        if self.policy == "skip" and getattr(args, "deepspeed", None):
            raise ValueError(
                "nonfinite_policy='skip' cannot work under DeepSpeed, whose engine applies the update inside "
                "backward before any callback runs; use 'error' or 'ignore'"
            )

    def _step_is_finite(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None) -> bool:
        loss_finite, self._loss_finite = self._loss_finite, None
        norm, self._grad_norm = self._grad_norm, None
        flag = torch.ones((), dtype=torch.float32) if loss_finite is None else loss_finite.float()
        if norm is not None:  # global over processes already
            if not math.isfinite(norm):
                flag = torch.zeros_like(flag)
        else:
            params = (
                [p for group in optimizer.param_groups for p in group["params"]]
                if optimizer is not None
                else list(model.parameters())
                if model is not None
                else []
            )
            grads = [_local(p.grad) for p in params if p.grad is not None]
            if grads:
                norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
                flag = flag.to(grads[0].device) * torch.isfinite(norms).all().float()
        if _distributed() and torch.distributed.get_world_size() > 1:
            backend = torch.distributed.get_backend()
            target = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            flag = flag.to(target)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())  # one host synchronisation per optimisation step

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
        if self.policy == "ignore":
            return
        if self._step_is_finite(model, optimizer):
            return
        step = state.global_step + 1
        if self.policy == "skip":
            self.skipped_steps += 1
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            return
        last = last_complete_checkpoint(args.output_dir)
        deepspeed_note = (
            " (under DeepSpeed the engine has already applied this update)" if getattr(args, "deepspeed", None) else ""
        )
        raise NonFiniteLossError(
            f"non-finite loss or gradients at optimisation step {step} (NaN/inf, e.g. a poisoned batch or too high a "
            f"learning rate); training stopped before this update{deepspeed_note}, so the weights are unchanged "
            f"since step {step - 1}. Last complete checkpoint: {last or 'none saved yet'}. Set "
            "nonfinite_policy='skip' to skip such steps instead."
        )


# Checkpoint safety lived here before it became its own module; kept importable from here.
from .checkpoints import (  # noqa: E402
    CHECKPOINT_COMPLETE_MARKER,
    CheckpointSafetyMixin,
    checkpoint_folders,
    checkpoint_is_complete,
    checkpoint_problem,
    last_complete_checkpoint,
    last_usable_checkpoint,
    read_checkpoint_marker,
    resolve_resume_checkpoint,
)
