"""hf_tvd_loss: the TaiLr / γ-cross-entropy loss for Hugging Face Transformers.

The loss functions (:mod:`hf_tvd_loss.ops`) and ``TVDArguments`` are pure PyTorch / dataclasses; the trainer
classes and callbacks (which import transformers) are loaded on first access, so ``import hf_tvd_loss`` stays
light. The layout: ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .args import TVDArguments, gamma_at_step
from .ops import (
    GammaCEStats,
    TokenWeightRule,
    focal_terms,
    gamma_cross_entropy,
    gamma_cross_entropy_with_stats,
    gamma_terms,
    gce_terms,
    linear_gamma_cross_entropy,
    linear_gamma_cross_entropy_with_stats,
    linear_token_weighted_cross_entropy,
    probability_power_rule,
    token_weighted_cross_entropy,
    tvd_weight,
)

__version__ = "0.1.0"

_LAZY = {
    "TVDLossMixin": "trainer",
    "TVDTrainer": "trainer",
    "TVDSeq2SeqTrainer": "trainer",
    "TVDLoss": "trainer",
    "NonFiniteGuard": "callbacks",
    "NonFiniteLossError": "callbacks",
    "CheckpointSafetyMixin": "checkpoints",
    "WithLossWeights": "collators",
    "TVDSFTTrainer": "sft",
}

__all__ = [
    "CheckpointSafetyMixin",
    "GammaCEStats",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "TVDArguments",
    "TVDLoss",
    "TVDLossMixin",
    "TVDSeq2SeqTrainer",
    "TVDSFTTrainer",
    "TVDTrainer",
    "TokenWeightRule",
    "focal_terms",
    "gamma_at_step",
    "gamma_cross_entropy",
    "gamma_cross_entropy_with_stats",
    "gamma_terms",
    "gce_terms",
    "linear_gamma_cross_entropy",
    "linear_gamma_cross_entropy_with_stats",
    "linear_token_weighted_cross_entropy",
    "probability_power_rule",
    "token_weighted_cross_entropy",
    "tvd_weight",
    "WithLossWeights",
]

if TYPE_CHECKING:
    from .callbacks import NonFiniteGuard, NonFiniteLossError
    from .checkpoints import CheckpointSafetyMixin
    from .collators import WithLossWeights
    from .sft import TVDSFTTrainer
    from .trainer import TVDLoss, TVDLossMixin, TVDSeq2SeqTrainer, TVDTrainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'hf_tvd_loss' has no attribute {name!r}")
