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
    from hf_tvd_loss.ops import kernels

    kernels.kernel_problem.cache_clear()
    yield
    kernels.kernel_problem.cache_clear()


@pytest.fixture
def kernels_on_cpu(fresh_kernel_checks):
    """Let the kernel backends run on CPU tensors; cce through cut-cross-entropy's own torch_compile implementation
    (:class:`hf_tvd_loss.ops.kernels.KernelSettings`); the settings in use before are restored afterwards."""
    from hf_tvd_loss.ops import kernels

    previous = kernels.set_kernel_settings(kernels.KernelSettings(devices=("cpu", "cuda"), cce_impl="torch_compile"))
    yield
    kernels.set_kernel_settings(previous)
