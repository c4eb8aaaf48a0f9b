import os
import sys

import pytest

# tests import the tiny-model helpers as a plain module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def fresh_kernel_checks():
    """Forget the cached kernel-backend capability checks before and after the test (it may patch packages)."""
    from hf_tvd_loss.ops import kernels as linear_loss

    linear_loss.kernel_problem.cache_clear()
    yield
    linear_loss.kernel_problem.cache_clear()


@pytest.fixture
def kernels_on_cpu(monkeypatch, fresh_kernel_checks):
    """Let the kernel backends run on CPU tensors; cce through cut-cross-entropy's own torch_compile implementation."""
    from hf_tvd_loss.ops import kernels as linear_loss

    monkeypatch.setattr(linear_loss, "_KERNEL_DEVICES", {"cce": ("cpu", "cuda"), "liger": ("cpu", "cuda")})
    monkeypatch.setattr(linear_loss, "_CCE_IMPL", "torch_compile")
