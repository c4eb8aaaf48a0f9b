"""The loss math, pure PyTorch (nothing here imports transformers).

* :mod:`.common`: shared pieces: option checks, per-token terms of each loss, targets, reductions, gradients.
* :mod:`.logits`: γ-CE (and the focal baseline) on materialised ``[..., V]`` logits.
* :mod:`.linear`: the same losses from hidden states and the output-embedding weight, a chunk of tokens at a
  time, without the ``[N, V]`` logits.
* :mod:`.kernels`: the fused CUDA kernels of cut-cross-entropy and liger-kernel as backends of :mod:`.linear`.
* :mod:`.reference`: readable float64 references, the judge of tests and benchmarks.
"""

from .common import (
    GammaCEStats,
    Reduction,
    TokenTerms,
    focal_terms,
    gamma_terms,
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
    "focal_cross_entropy_with_stats",
    "focal_terms",
    "gamma_cross_entropy",
    "gamma_cross_entropy_with_stats",
    "gamma_terms",
    "linear_gamma_cross_entropy",
    "linear_gamma_cross_entropy_with_stats",
    "linear_token_weighted_cross_entropy",
    "token_weighted_cross_entropy",
    "tvd_weight",
    "validate_focal_hyperparameters",
    "validate_loss_hyperparameters",
]
