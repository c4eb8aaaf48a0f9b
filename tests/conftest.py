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
    (:class:`hf_tvd_loss.ops.kernels.KernelSettings`); the settings in use before are restored afterwards.

    That implementation's Python runs eagerly here (``torch.compiler.set_stance("force_eager")``): what the tests judge
    is this library's call into the package (arguments, per-token output, ignored tokens, gradients), not inductor's
    C++ code generation of it, which took 29 s of a cold run (the first compile 21 s) and is no path a user trains
    on (cce on a GPU is its Triton kernel; tests/test_kernels_interpreted.py runs that one, interpreted)."""
    import torch

    from hf_tvd_loss.ops import kernels

    previous = kernels.set_kernel_settings(kernels.KernelSettings(devices=("cpu", "cuda"), cce_impl="torch_compile"))
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        kernels.set_kernel_settings(previous)


@pytest.fixture(scope="session")
def sharded_gradient_runs(request, tmp_path_factory):
    """ONE ``torchrun --nproc_per_node 2`` launch for the sharded-gradient checks of tests/test_fsdp.py (fsdp_worker
    ``grads``: OUT/grads.json) and tests/test_zero3.py (zero3_worker: OUT/zero3.json), each part only when a collected
    test reads it; the processes and their imports (torch, transformers, DeepSpeed) are then paid once. A failing
    launch errors the tests of both files (the assertion shows the launch's output)."""
    from test_fsdp import HERE, deepspeed_python, torchrun

    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    modes = [mode for mode, fixture in (("grads", "fsdp_results"), ("zero3", "zero3_results")) if fixture in wanted]
    python = deepspeed_python() if "zero3" in modes else None  # .venv-deepspeed: .venv plus DeepSpeed
    out = tmp_path_factory.mktemp("sharded")
    if modes:
        torchrun([os.path.join(HERE, "fsdp_worker.py"), "+".join(modes), str(out)], port=29612, python=python)
    return out
