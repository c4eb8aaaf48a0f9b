"""The loss math, pure PyTorch (nothing here imports transformers).

* :mod:`.common`: shared pieces: option checks, the per-token weight rule of each loss (:class:`TokenWeightRule`),
  targets, reductions, gradients.
* :mod:`.logits`: γ-CE (and the focal baseline) on materialised ``[..., V]`` logits.
* :mod:`.linear`: the same losses from hidden states and the output-embedding weight, without the ``[N, V]``
  logits: the public entry (checks, targets, choice of backend, reduction).
* :mod:`.linear_torch`: its pure-PyTorch backend, a chunk of tokens at a time.
* :mod:`.kernels`: its fused CUDA kernel backends, cut-cross-entropy and liger-kernel (and their settings).
* :mod:`.reference`: readable float64 references, the judge of tests and benchmarks.
"""

from .common import (
    GammaCEStats,
    Reduction,
    TokenTerms,
    TokenWeightRule,
    focal_terms,
    gamma_terms,
    gce_terms,
    probability_power_rule,
    tvd_weight,
    validate_focal_hyperparameters,
    validate_loss_hyperparameters,
)
from .linear import (
    Impl,
    linear_gamma_cross_entropy,
    linear_gamma_cross_entropy_with_stats,
    linear_token_weighted_cross_entropy,
)
from .logits import (
    focal_cross_entropy_with_stats,
    gamma_cross_entropy,
    gamma_cross_entropy_with_stats,
    token_weighted_cross_entropy,
)

__all__ = [
    "GammaCEStats",
    "Impl",
    "Reduction",
    "TokenTerms",
    "TokenWeightRule",
    "focal_cross_entropy_with_stats",
    "focal_terms",
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
    "validate_focal_hyperparameters",
    "validate_loss_hyperparameters",
]
