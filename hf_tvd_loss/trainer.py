"""Trainers whose ``compute_loss`` is token-level γ-CE (TaiLr).

``TVDLossMixin`` holds everything; ``TVDTrainer`` and ``TVDSeq2SeqTrainer`` are the mixin on top of
``transformers.Trainer`` and ``Seq2SeqTrainer``. What the mixin changes, and why:

* The loss: labels are popped before the model call (so the model does not compute a second, wasted
  cross-entropy), the logits go to :func:`~hf_tvd_loss.gamma_cross_entropy_with_stats`; causal LMs have their
  labels shifted inside the loss, encoder-decoders get ``decoder_input_ids`` built from the labels when the
  collator did not.
* Normalisation: the loss is ``Σ token losses / num_items_in_batch``, where ``num_items_in_batch`` is counted
  here (over the whole gradient-accumulation step, summed across processes) with the right rule for the
  model family, times the number of processes because DDP averages gradients. This makes batch 16, 8×2 and
  4×4 accumulation and 2 processes × 4 × 2 train identically (stock transformers 5.23 does not for T5/BART).
* Metrics: per-token sums (objective, plain NLL, weight, count) are kept on the device and only synchronised
  when logging; ``loss`` / ``nll`` / ``tvd_weight_mean`` / ``gamma`` are token-weighted averages over all
  processes, for training logs and for ``evaluate()``/``predict()`` (prefixed ``eval_``/``test_``), also when
  ``predict_with_generate`` makes the stock ``Seq2SeqTrainer`` skip ``compute_loss``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .args import TVDArguments
from .heads import resolve_output_head_with_reason
from .linear_loss import linear_gamma_cross_entropy_with_stats
from .loss import GammaCEStats, focal_cross_entropy_with_stats, gamma_cross_entropy_with_stats

logger = logging.getLogger(__name__)

__all__ = [
    "NonFiniteLossError",
    "TVDLoss",
    "TVDLossMixin",
    "TVDSeq2SeqTrainer",
    "TVDTrainer",
    "last_complete_checkpoint",
]

IGNORE_INDEX = -100
_MODES = ("train", "eval")
# Written (atomically) into a checkpoint folder once everything else in it is on disk.
CHECKPOINT_COMPLETE_MARKER = "tvd_checkpoint_complete.json"


class NonFiniteLossError(RuntimeError):
    """Training met NaN/inf gradients and ``TVDArguments.nonfinite_policy`` is ``"error"``."""


def _checkpoint_is_complete(path: str) -> bool:
    if os.path.isfile(os.path.join(path, CHECKPOINT_COMPLETE_MARKER)):
        return True
    # Checkpoints written by a stock Trainer have no marker; their trainer_state.json is written after the
    # model, optimizer and RNG states, so a parseable one means the folder is complete.
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
        if os.path.isdir(path) and _checkpoint_is_complete(path):
            return path
    return None


def _write_json_atomically(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model: strips DDP/FSDP/compile wrappers (``.module``) and PEFT wrappers."""
    seen = 0
    while seen < 8:  # wrappers nest only a few levels deep
        seen += 1
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        else:
            break
    return model


def _is_encoder_decoder(model: nn.Module) -> bool:
    config = getattr(_unwrap(model), "config", None)
    return bool(getattr(config, "is_encoder_decoder", False))


def _shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[..., 1:] = labels[..., :-1]
    shifted[..., 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == IGNORE_INDEX, pad_token_id)


def decoder_input_ids_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Right-shifted decoder inputs for an encoder-decoder model, as its own loss path would build them."""
    base = _unwrap(model)
    prepare = getattr(base, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return prepare(labels=labels)
    config = base.config
    start = getattr(config, "decoder_start_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    if start is None or pad is None:
        raise ValueError(
            f"{type(base).__name__} has no prepare_decoder_input_ids_from_labels and its config lacks "
            "decoder_start_token_id/pad_token_id: pass decoder_input_ids in the batch (e.g. with "
            "DataCollatorForSeq2Seq(model=...))."
        )
    return _shift_tokens_right(labels, pad, start)


def _get_logits(outputs: Any, model: nn.Module) -> torch.Tensor:
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else outputs[0]
    if not torch.is_tensor(logits):
        raise ValueError(
            f"{type(_unwrap(model)).__name__} returned no logits; γ-CE needs a language-modelling head "
            "(e.g. AutoModelForCausalLM or AutoModelForSeq2SeqLM)."
        )
    return logits


def token_loss(
    tvd_args: TVDArguments,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float,
    shift_labels: bool,
    num_items_in_batch: torch.Tensor | int | None,
) -> tuple[torch.Tensor, GammaCEStats]:
    """The loss selected by ``tvd_args.loss_type`` (γ-CE at the given γ, or the focal baseline)."""
    common = dict(
        label_smoothing=tvd_args.label_smoothing,
        ignore_index=IGNORE_INDEX,
        shift_labels=shift_labels,
        num_items_in_batch=num_items_in_batch,
    )
    if tvd_args.loss_type == "focal":
        return focal_cross_entropy_with_stats(
            logits, labels, focal_gamma=tvd_args.focal_gamma, focal_alpha=tvd_args.focal_alpha, **common
        )
    return gamma_cross_entropy_with_stats(logits, labels, gamma=gamma, min_weight=tvd_args.min_weight, **common)


class _ChunkedHead:
    """What the chunked loss needs besides the hidden states: the lm_head module (its input is captured, so any
    scaling the model applies before it, such as T5's, is already in), the bias it adds after (BART's
    ``final_logits_bias``) and Gemma-2's soft-capping."""

    def __init__(self, module: nn.Linear, bias: torch.Tensor | None, softcap: float | None) -> None:
        self.module, self.bias, self.softcap = module, bias, softcap


def _forward_capturing_head_input(
    model: nn.Module, head: nn.Module, inputs: dict[str, Any]
) -> tuple[Any, torch.Tensor]:
    """Run the (possibly DDP/FSDP-wrapped) model with its lm_head fed zero positions, and return the hidden
    states the head would have seen. The model's own forward runs, so the wrappers' hooks (DDP gradient
    all-reduce, FSDP unsharding) behave as usual, and the ``[tokens, vocab]`` logits are never built."""
    captured: list[torch.Tensor] = []

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        captured.append(hidden)
        return (hidden[..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        outputs = model(**inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the output head to run once in the forward pass, it ran {len(captured)} times")
    return outputs, captured[0]


def _count_targets(batch: Mapping[str, Any], shifts_labels: bool) -> torch.Tensor | None:
    """Number of tokens the loss will score in one batch (labels ≠ -100, after the causal shift)."""
    if "shift_labels" in batch and torch.is_tensor(batch["shift_labels"]):
        targets = batch["shift_labels"]
    elif "labels" in batch and torch.is_tensor(batch["labels"]):
        targets = batch["labels"][..., 1:] if shifts_labels else batch["labels"]
    else:
        return None
    return targets.ne(IGNORE_INDEX).sum()


class TVDLossMixin:
    """Mixin for ``transformers.Trainer`` subclasses: token-level γ-CE as the training and evaluation loss.

    Construct the trainer exactly like its parent, plus ``tvd_args=TVDArguments(...)``::

        trainer = TVDTrainer(model=model, args=training_args, train_dataset=ds, tvd_args=TVDArguments(gamma=0.1))

    Put it before the Trainer class in the bases (``class MyTrainer(TVDLossMixin, Trainer)``).
    """

    # compute_loss returns Σ / (token count of the whole accumulation step), so Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, tvd_args: TVDArguments | None = None, **kwargs: Any) -> None:
        if tvd_args is None:
            tvd_args = TVDArguments()
        if not isinstance(tvd_args, TVDArguments):
            raise ValueError(f"tvd_args must be a TVDArguments instance, got {type(tvd_args).__name__}")
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "compute_loss_func cannot be combined with a TVD trainer, whose compute_loss is the γ-CE loss; "
                "use the stock Trainer with compute_loss_func=TVDLoss(...) instead"
            )
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and getattr(training_args, "label_smoothing_factor", 0.0):
            raise ValueError(
                "TrainingArguments.label_smoothing_factor must be 0 with a TVD trainer: set "
                f"TVDArguments.label_smoothing={training_args.label_smoothing_factor} instead (it is combined "
                "with the γ-CE term as in the official TaiLr criterion)"
            )
        self.tvd_args = tvd_args
        super().__init__(*args, **kwargs)
        # Keep the stock token counting and the model's own loss path off: this class counts the scored
        # tokens itself (get_batch_samples) with the rule that matches its loss.
        self.model_accepts_loss_kwargs = False
        self._tvd_sums: dict[str, torch.Tensor | None] = dict.fromkeys(_MODES)
        self._tvd_last_gamma: float | None = None
        self._tvd_skipped_steps = 0
        self._tvd_head_cache: tuple[int, Any, str | None] | None = None

    # ---------------------------------------------------------------- γ
    def current_gamma(self) -> float:
        """γ for the current global step (the schedule is a function of the step, so it survives a resume)."""
        state = self.state
        if state.max_steps <= 0:  # evaluation outside training: the target value
            return self.tvd_args.gamma
        return self.tvd_args.gamma_at(state.global_step, state.max_steps)

    # ---------------------------------------------------------------- token counting
    def get_batch_samples(self, epoch_iterator, num_batches, device):  # type: ignore[override]
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items_in_batch is None:
            num_items_in_batch = self._tvd_count_tokens(batch_samples, device)
        return batch_samples, num_items_in_batch

    def _tvd_count_tokens(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        shifts = not _is_encoder_decoder(self.model)
        counts = [_count_targets(batch, shifts) for batch in batch_samples if isinstance(batch, Mapping)]
        if not counts or any(c is None for c in counts):
            return None
        total = torch.stack([c.to(device) for c in counts]).sum().float()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    # ---------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if "labels" not in inputs and "shift_labels" not in inputs:
            raise ValueError(
                "TVD trainers need `labels` in every batch (token ids, -100 where not scored); got keys "
                f"{sorted(inputs)}"
            )
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        shift_labels = inputs.pop("shift_labels", None)
        encoder_decoder = _is_encoder_decoder(model)
        if (
            encoder_decoder
            and labels is not None
            and "decoder_input_ids" not in inputs
            and "decoder_inputs_embeds" not in inputs
        ):
            inputs["decoder_input_ids"] = decoder_input_ids_from_labels(model, labels)
        if shift_labels is not None:  # padding-free collators provide the shifted targets themselves
            targets, shift = shift_labels, False
        else:
            targets, shift = labels, not encoder_decoder

        gamma = self.current_gamma()
        # In training, normalise by the token count of the whole accumulation step (all processes); in
        # evaluation, by this batch's own count (the exact eval averages come from the logged sums).
        global_norm = model.training and num_items_in_batch is not None
        denominator = num_items_in_batch if global_norm else None
        head = self._tvd_chunked_head(model) if model.training else None
        if head is not None:
            outputs, hidden = _forward_capturing_head_input(model, head.module, inputs)
            loss, stats = linear_gamma_cross_entropy_with_stats(
                hidden,
                head.module.weight,
                targets,
                bias=head.bias,
                final_logit_softcapping=head.softcap,
                gamma=gamma,
                min_weight=self.tvd_args.min_weight,
                label_smoothing=self.tvd_args.label_smoothing,
                ignore_index=IGNORE_INDEX,
                shift_labels=shift,
                num_items_in_batch=denominator,
                impl=self.tvd_args.chunked_backend,
            )
        else:
            outputs = model(**inputs)
            logits = _get_logits(outputs, model)
            loss, stats = token_loss(
                self.tvd_args, logits, targets, gamma=gamma, shift_labels=shift, num_items_in_batch=denominator
            )
        if global_norm and self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            # DDP averages gradients over processes; the count above is global, so undo that average.
            loss = loss * self.accelerator.num_processes
        # Read by Trainer.training_step right after this call: without a global count the loss is a
        # micro-batch mean that Trainer must still divide by the accumulation steps.
        self.loss_is_scaled_for_ga = global_norm
        self._tvd_last_gamma = gamma
        self._tvd_record("train" if model.training else "eval", stats)
        return (loss, outputs) if return_outputs else loss

    def _tvd_chunked_head(self, model: nn.Module) -> _ChunkedHead | None:
        """The output head for ``loss_impl='chunked'``, or None (logits path), resolved once per model."""
        if self.tvd_args.loss_impl != "chunked":
            return None
        base = _unwrap(model)
        if self._tvd_head_cache is not None and self._tvd_head_cache[0] == id(base):
            return self._tvd_head_cache[1]
        head, reason = None, None
        if self.tvd_args.loss_type != "gamma_ce":
            reason = f"loss_type={self.tvd_args.loss_type!r} has no chunked implementation"
        else:
            resolved, reason = resolve_output_head_with_reason(base)
            if resolved is not None:
                head = _ChunkedHead(
                    module=base.get_output_embeddings(), bias=resolved.bias, softcap=resolved.final_logit_softcapping
                )
        if head is None:
            logger.warning("loss_impl='chunked' falls back to the logits path for %s: %s", type(base).__name__, reason)
        self._tvd_head_cache = (id(base), head, reason)
        return head

    # ---------------------------------------------------------------- metrics
    def _tvd_record(self, mode: str, stats: GammaCEStats) -> None:
        row = torch.stack([stats.objective_sum, stats.nll_sum, stats.weight_sum, stats.num_tokens]).double()
        current = self._tvd_sums.get(mode)
        self._tvd_sums[mode] = row if current is None else current + row.to(current.device)

    def _tvd_drain(self, mode: str, prefix: str) -> dict[str, float]:
        """Token-weighted averages since the last drain, summed over processes; resets the sums.

        Must be called on every process (it is a collective when training is distributed).
        """
        sums = self._tvd_sums.get(mode)
        self._tvd_sums[mode] = None
        if sums is None:
            sums = torch.zeros(4, dtype=torch.float64)
        if self.args.world_size > 1:
            sums = self.accelerator.gather(sums.to(self.args.device).reshape(1, 4)).sum(0)
        objective, nll, weight, count = sums.tolist()
        metrics: dict[str, float] = {}
        if count > 0:
            metrics[f"{prefix}nll"] = nll / count
            metrics[f"{prefix}perplexity"] = math.exp(min(nll / count, 700.0))
            metrics[f"{prefix}tvd_weight_mean"] = weight / count
            if prefix:  # training's `loss` is logged by Trainer itself (the same quantity, step-averaged)
                metrics[f"{prefix}loss"] = objective / count
        gamma = self._tvd_last_gamma if mode == "train" and self._tvd_last_gamma is not None else None
        if self.tvd_args.loss_type == "gamma_ce":
            metrics[f"{prefix}gamma"] = gamma if gamma is not None else self.current_gamma()
        return metrics

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # The periodic training log is the one with a `loss` entry (evaluation logs have `eval_loss`).
        if "loss" in logs:
            logs.update(self._tvd_drain("train", prefix=""))
            if self.tvd_args.nonfinite_policy == "skip":
                logs["nonfinite_skipped_steps"] = float(self._tvd_skipped_steps)
        super().log(logs, *args, **kwargs)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):  # type: ignore[override]  # noqa: E501
        self._tvd_sums["eval"] = None
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        # Exact token-weighted averages over the whole evaluation set and all processes (the stock
        # eval_loss averages per-batch means).
        output.metrics.update(self._tvd_drain("eval", prefix=f"{metric_key_prefix}_"))
        return output

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._tvd_sums = dict.fromkeys(_MODES)
        self._tvd_skipped_steps = 0
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no completely written "
                    f"{PREFIX_CHECKPOINT_DIR}-N folder"
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str) and not _checkpoint_is_complete(resume_from_checkpoint):
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} is missing or was not completely written (no "
                f"{CHECKPOINT_COMPLETE_MARKER} and no readable trainer_state.json); last complete one in its "
                f"folder: {last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))}"
            )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Stock save, then a completion marker written atomically, then rotation of old checkpoints.

        Rotation is deferred until the new checkpoint is marked complete, so a kill at any moment leaves at least
        one complete checkpoint to resume from.
        """
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process has written its part (e.g. sharded states)
        if not self.args.should_save:
            return
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        _write_json_atomically(
            os.path.join(folder, CHECKPOINT_COMPLETE_MARKER),
            {"global_step": self.state.global_step, "tvd_args": dict(self.tvd_args.__dict__)},
        )
        if limit is not None:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    # ---------------------------------------------------------------- non-finite guard
    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.tvd_args.nonfinite_policy != "ignore" and not self.is_deepspeed_enabled:
            self._tvd_guard_optimizer(optimizer)
        return optimizer

    def _tvd_guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Wrap ``optimizer.step`` so that an update with NaN/inf gradients never happens.

        All processes see the same all-reduced gradients (and the flag is all-reduced for sharded ones), so they
        take the same decision and nobody waits forever for a peer.
        """
        if getattr(optimizer, "_tvd_guarded", False):
            return
        inner_step = optimizer.step
        trainer = self

        def guarded_step(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            if trainer._tvd_gradients_finite(opt):
                return inner_step(*args, **kwargs)
            trainer._tvd_on_nonfinite()
            return None

        # a bound method (not a plain function), so that LR schedulers can wrap it as usual
        optimizer.step = types.MethodType(guarded_step, optimizer)
        optimizer._tvd_guarded = True

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        # Trainer computes the step's total gradient norm (global over processes) just before optimizer.step;
        # keep it so the non-finite guard needs no second pass over the gradients.
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._tvd_step_grad_norm = norm
        return norm

    def _tvd_gradients_finite(self, optimizer: torch.optim.Optimizer) -> bool:
        norm, self._tvd_step_grad_norm = getattr(self, "_tvd_step_grad_norm", None), None
        if norm is not None:
            return math.isfinite(float(norm))  # one host sync per optimisation step
        # No norm from Trainer for this step (e.g. a custom loop calling optimizer.step): compute it here.
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return True
        finite = torch.isfinite(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)).float()
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            finite = finite.to(self.args.device)
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())  # one host sync per optimisation step

    def _tvd_on_nonfinite(self) -> None:
        step = self.state.global_step + 1
        if self.tvd_args.nonfinite_policy == "skip":
            self._tvd_skipped_steps += 1
            return
        last = last_complete_checkpoint(self.args.output_dir)
        raise NonFiniteLossError(
            f"non-finite loss or gradients at optimisation step {step} (NaN/inf, e.g. a poisoned batch or too "
            "high a learning rate); training stopped before this update, so the weights are unchanged. Last "
            f"complete checkpoint: {last or 'none saved yet'}. Set TVDArguments.nonfinite_policy='skip' to skip "
            "such steps instead."
        )


class TVDTrainer(TVDLossMixin, Trainer):
    """``transformers.Trainer`` whose loss is token-level γ-CE. Extra argument: ``tvd_args=TVDArguments(...)``."""


class TVDSeq2SeqTrainer(TVDLossMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` whose loss is token-level γ-CE. Extra argument: ``tvd_args``.

    With ``predict_with_generate=True`` the stock class computes its evaluation loss with ``model(**inputs)``
    and never calls ``compute_loss``; here the γ-CE loss (and ``eval_nll`` etc.) is computed by a teacher-forced
    pass before generating, and that pass replaces the stock one (one teacher-forced forward per batch, as in
    the stock class).
    """

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):  # type: ignore[override]
        if not self.args.predict_with_generate or prediction_loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        prepared = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, prepared).detach()
        # The parent generates with self.model and computes its (stock) loss with one teacher-forced call of the
        # `model` it is given: hand it our γ-CE loss instead of running that forward a second time.
        return super().prediction_step(
            _ReturnsLoss(model, loss), inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
        )


class _ReturnsLoss:
    """Stands in for ``model`` in ``Seq2SeqTrainer.prediction_step``: calling it returns ``{"loss": loss}``.

    Every attribute is the wrapped model's, so anything else the parent does with ``model`` still works.
    """

    def __init__(self, model: nn.Module, loss: torch.Tensor) -> None:
        self._model, self._loss = model, loss

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"loss": self._loss}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class TVDLoss:
    """γ-CE as a ``compute_loss_func`` for the stock ``Trainer``: ``Trainer(..., compute_loss_func=TVDLoss(args))``.

    The stock Trainer pops ``labels`` before calling the model and passes ``num_items_in_batch``; this returns
    ``Σ token losses / num_items_in_batch``. Use ``shift_labels=True`` (default) for causal LMs and ``False``
    for encoder-decoders (whose collator must then provide ``decoder_input_ids``, e.g.
    ``DataCollatorForSeq2Seq(model=...)``, since the model no longer sees the labels). γ schedules need the
    trainer's step: use :class:`TVDTrainer` for those. Token counting is the stock Trainer's (for GPT-2, whose
    ``loss_type`` is None, it includes the unshifted first label).
    """

    def __init__(self, tvd_args: TVDArguments | None = None, *, shift_labels: bool = True) -> None:
        tvd_args = tvd_args if tvd_args is not None else TVDArguments()
        if not isinstance(tvd_args, TVDArguments):
            raise ValueError(f"tvd_args must be a TVDArguments instance, got {type(tvd_args).__name__}")
        if tvd_args.gamma_schedule != "constant":
            raise ValueError(
                "TVDLoss (compute_loss_func) has no access to the training step, so "
                f"TVDArguments.gamma_schedule must be 'constant', got {tvd_args.gamma_schedule!r}; use TVDTrainer"
            )
        self.tvd_args = tvd_args
        self.shift_labels = shift_labels

    def __call__(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("TVDLoss needs labels; the batch has none")
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else outputs[0]
        return token_loss(
            self.tvd_args,
            logits,
            labels,
            gamma=self.tvd_args.gamma,
            shift_labels=self.shift_labels,
            num_items_in_batch=num_items_in_batch,
        )[0]
