"""γ-CE inside TRL's ``SFTTrainer``: :class:`TVDSFTTrainer` (the ``trl`` extra: ``pip install 'hf_tvd_loss[trl]'``).

Everything ``SFTTrainer`` does to the data stays as it is: prompt-completion and conversational (``messages``) data,
completion-only and assistant-only loss, chat templates, ``padding_free`` and packing. Only the loss changes: it is
:class:`~hf_tvd_loss.TVDLossMixin`'s (γ-CE with floor and label smoothing, the focal baseline, ``loss_impl``,
``normalization``, ``loss_weights``), with the mixin's token counting over the accumulation step and processes.

Differences from ``SFTConfig`` options, refused with the reason rather than ignored:

* ``loss_type`` must stay ``"nll"``: DFT is ``TVDArguments(gamma=1.0)`` (equal to TRL's ``loss_type="dft"``).
* ``label_smoothing_factor`` must stay 0: use ``TVDArguments.label_smoothing`` (combined as in TaiLr).

Logged metrics: TRL's ``num_tokens`` as before, and its ``mean_token_accuracy`` / ``entropy`` when
``TVDArguments.extra_metrics`` is on (it is turned on here), next to the mixin's ``nll``, ``perplexity``,
``tvd_weight_mean`` and ``gamma``. One name per quantity: the mixin's token accuracy is logged under TRL's name
only, and both values are the mixin's exact token-weighted averages (TRL's are means of per-batch means).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .args import TVDArguments
from .checkpoints import CheckpointSafetyMixin
from .trainer import TVDLossMixin

try:
    from trl import SFTTrainer
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("TVDSFTTrainer needs TRL (>= 1.16): pip install 'hf_tvd_loss[trl]'") from exc

__all__ = ["TVDSFTTrainer"]

# TRL's metric names for the mixin's token-weighted metrics of the same meaning
_TRL_NAMES = {"token_accuracy": "mean_token_accuracy", "entropy": "entropy"}


class TVDSFTTrainer(TVDLossMixin, CheckpointSafetyMixin, SFTTrainer):
    """``trl.SFTTrainer`` whose loss is token-level γ-CE. Extra argument: ``tvd_args=TVDArguments(...)``.

    ::

        trainer = TVDSFTTrainer(model=model, args=SFTConfig(output_dir="out", completion_only_loss=True),
                                train_dataset=prompt_completion_data, tvd_args=TVDArguments(gamma=0.8, min_weight=0.2))
    """

    def __init__(self, *args: Any, tvd_args: TVDArguments | None = None, **kwargs: Any) -> None:
        sft_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        loss_type = getattr(sft_args, "loss_type", "nll")
        if loss_type != "nll":
            raise ValueError(
                f"SFTConfig.loss_type={loss_type!r} cannot be combined with TVDSFTTrainer, whose loss is set by "
                "TVDArguments: leave loss_type='nll' (DFT is TVDArguments(gamma=1.0), the same loss)"
            )
        tvd_args = tvd_args if tvd_args is not None else TVDArguments()
        if isinstance(tvd_args, TVDArguments) and not tvd_args.extra_metrics:
            tvd_args = dataclasses.replace(tvd_args, extra_metrics=True)  # TRL logs accuracy and entropy
        super().__init__(*args, tvd_args=tvd_args, **kwargs)
        # TRL keeps its num_tokens count and its logged metrics in private attributes (TRL 1.16), which the loss
        # here replaces: check they exist instead of failing (or logging nothing) in the first step.
        if not (isinstance(getattr(self, "_metrics", None), dict) and hasattr(self, "_total_train_tokens")):
            import trl

            raise ImportError(
                f"TVDSFTTrainer was written against TRL 1.16 (SFTTrainer._metrics, _total_train_tokens); TRL "
                f"{trl.__version__} has neither: install a TRL between 1.16 and 2 (pip install 'hf_tvd_loss[trl]')"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if model.training:  # TRL's running count of trained tokens (its `num_tokens` log entry)
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            elif "position_ids" in inputs:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            else:
                local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def _tvd_drain(self, mode: str, prefix: str) -> dict[str, float]:
        return _with_trl_names(super()._tvd_drain(mode, prefix))


def _with_trl_names(logs: dict[str, float]) -> dict[str, float]:
    """The mixin's metrics under TRL's names, one name per quantity (``mean_token_accuracy``, not also
    ``token_accuracy``). The values are the mixin's exact token-weighted averages over the logging window and all
    processes (TRL's own would be means of per-batch means), which is why they replace TRL's rather than sit beside."""
    for ours, theirs in _TRL_NAMES.items():
        for prefix in ("", "eval_", "test_"):
            if f"{prefix}{ours}" in logs and ours != theirs:
                logs[f"{prefix}{theirs}"] = logs.pop(f"{prefix}{ours}")
    return logs
