"""Training-loop safety that is not the loss: checkpoint completion and the non-finite step guard.

Both work with any ``transformers.Trainer``, not only the TVD trainers:

* :class:`NonFiniteGuard` is a ``TrainerCallback``: ``Trainer(..., callbacks=[NonFiniteGuard("skip")])``. Just
  before each optimizer step it checks the step's gradients (and, when told by the trainer, its loss) and either
  stops with :class:`NonFiniteLossError` before the update or skips the update.
* :class:`CheckpointSafetyMixin` is a small mixin (``class T(CheckpointSafetyMixin, Trainer)``): it marks each
  checkpoint complete once everything in it is on disk, rotates old checkpoints only after that, and resumes
  only from complete ones (``resume_from_checkpoint=True`` finds the last complete one).

The TVD trainers include both (:class:`~hf_tvd_loss.TVDTrainer` adds the guard from
``TVDArguments.nonfinite_policy``).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Literal

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

__all__ = [
    "CHECKPOINT_COMPLETE_MARKER",
    "CheckpointSafetyMixin",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "checkpoint_is_complete",
    "last_complete_checkpoint",
]

NonFinitePolicy = Literal["error", "skip", "ignore"]
# Written (atomically) into a checkpoint folder once everything else in it is on disk.
CHECKPOINT_COMPLETE_MARKER = "tvd_checkpoint_complete.json"


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
        if policy not in ("error", "skip", "ignore"):
            raise ValueError(f"NonFiniteGuard policy must be 'error', 'skip' or 'ignore', got {policy!r}")
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


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_is_complete(path: str) -> bool:
    """Whether ``path`` is a completely written checkpoint folder.

    Folders written by :class:`CheckpointSafetyMixin` carry a marker; a stock Trainer's checkpoint has none, but
    its ``trainer_state.json`` is written after the model, optimizer and RNG states, so a parseable one means the
    folder is complete.
    """
    if os.path.isfile(os.path.join(path, CHECKPOINT_COMPLETE_MARKER)):
        return True
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-step ``checkpoint-N`` folder in ``output_dir`` that was completely written, or None.

    Unlike ``transformers.trainer_utils.get_last_checkpoint``, a folder left half-written by a killed process
    is skipped.
    """
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted(
        (int(m.group(1)), name) for name in os.listdir(output_dir) if (m := pattern.match(name)) is not None
    )
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and checkpoint_is_complete(path):
            return path
    return None


def _write_json_atomically(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointSafetyMixin:
    """Mixin for ``transformers.Trainer`` subclasses: complete checkpoints only.

    * Each checkpoint gets a completion marker, written atomically after every process has written its part.
    * ``save_total_limit`` rotation runs only after the new checkpoint is marked complete, so a kill at any moment
      leaves at least one complete checkpoint to resume from.
    * ``train(resume_from_checkpoint=True)`` resumes from the last *complete* checkpoint in ``output_dir``; a path
      to an incomplete one is refused, naming the last complete one.

    ``checkpoint_metadata()`` may return a dict stored in the marker (the TVD trainers store their loss settings).
    """

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {}

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no completely written "  # type: ignore[attr-defined]
                    f"{PREFIX_CHECKPOINT_DIR}-N folder"
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str) and not checkpoint_is_complete(resume_from_checkpoint):
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} is missing or was not completely written (no "
                f"{CHECKPOINT_COMPLETE_MARKER} and no readable trainer_state.json); last complete one in its "
                f"folder: {last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))}"
            )
        return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Stock save, then the completion marker, then rotation of old checkpoints."""
        args = self.args  # type: ignore[attr-defined]
        limit = args.save_total_limit
        args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]  # every process has written its part
        if not args.should_save:
            return
        state = self.state  # type: ignore[attr-defined]
        run_dir = self._get_output_dir(trial=trial)  # type: ignore[attr-defined]
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        _write_json_atomically(
            os.path.join(folder, CHECKPOINT_COMPLETE_MARKER),
            {"global_step": state.global_step, **self.checkpoint_metadata()},
        )
        if limit is not None:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=state.best_model_checkpoint,
                use_mtime=True,
            )
