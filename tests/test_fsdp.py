"""FSDP2 (``fully_shard``) on 2 CPU processes (gloo): the loss and every gradient equal the unsharded model's.

One ``torchrun`` launch (shared with tests/test_zero3.py's ZeRO-3 gradients: conftest.sharded_gradient_runs) runs
every configuration (tests/fsdp_worker.py): loss_impl logits / chunked × lm_head in
the root unit / its own unit × reshard_after_forward True / False × tied / untied embeddings on a tiny Llama, a
tiny BART and T5 (lm_head in the root unit), FSDP1 with lm_head in the root unit and wrapped on its own, and
tensor parallelism on lm_head (refused). The chunked runs also check that no ``[tokens, vocab]`` tensor is created
(4 rows of logits per chunk). Then a whole ``TVDTrainer.train()`` under FSDP2 with a checkpoint and a resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHUNK_ROWS = 4
TOKENS_PER_PROCESS = 2 * 12  # the worker's batch half


def deepspeed_python() -> str:
    """The interpreter that has DeepSpeed: ``.venv-deepspeed`` (scripts/install.sh: the main environment plus
    DeepSpeed, kept out of it so that the environment you run in does not print DeepSpeed's accelerator line), or
    this one if DeepSpeed is installed here. Neither: the ZeRO-3 tests fail, naming the install step."""
    import importlib.util

    overlay = os.path.join(ROOT, ".venv-deepspeed", "bin", "python")
    if os.path.exists(overlay):
        return overlay
    if importlib.util.find_spec("deepspeed") is not None:
        return sys.executable
    pytest.fail("DeepSpeed is not installed: run scripts/install.sh (it puts DeepSpeed into .venv-deepspeed)")


def torchrun(args: list[str], port: int, timeout: int = 300, python: str | None = None) -> None:
    python = python or sys.executable
    run_two_processes(
        [python, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args],
        timeout=timeout,
    )


def run_two_processes(cmd: list[str], timeout: int = 300) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed workers: its CPU accelerator (gloo), no CUDA probing
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def fsdp_results(sharded_gradient_runs):
    # tests/conftest.py: the same torchrun launch as tests/test_zero3.py's ZeRO-3 gradients
    with open(sharded_gradient_runs / "grads.json") as f:
        return {_name(r): r for r in json.load(f)}


def _name(r: dict) -> str:
    if r.get("engine") in ("tensor_parallel", "fsdp_on_cpu"):
        return r["engine"]
    return "-".join(
        [
            r.get("engine") or "fsdp2",
            r["family"],
            r["impl"],
            "head_unit" if r["head_unit"] else "head_in_root",
            "reshard" if r["reshard"] else "no_reshard",
            "tied" if r["tied"] else "untied",
        ]
    )


CONFIGS = (
    [
        f"fsdp2-llama-{impl}-{head}-{reshard}-{tied}"
        for impl in ("logits", "chunked")
        for head in ("head_in_root", "head_unit")
        for reshard in ("reshard", "no_reshard")
        for tied in ("untied", "tied")
    ]
    + [
        f"fsdp2-{family}-{impl}-head_in_root-reshard-tied"
        for family in ("bart", "t5")
        for impl in ("logits", "chunked")
    ]
    + [f"fsdp1-llama-chunked-{head}-reshard-untied" for head in ("head_in_root", "head_unit")]
)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_sharded_matches_unsharded(fsdp_results, config):
    r = fsdp_results[config]
    if config.startswith("fsdp2"):
        # FSDP2 renames the classes; the chunked path still recognises the model (no refusal, no fallback)
        assert r["model_class"].startswith("FSDP")
        assert r["head_class"] == ("FSDPLinear" if r["head_unit"] else "Linear")
    else:
        assert r["model_class"] == "FullyShardedDataParallel"
        assert r["head_class"] == ("FullyShardedDataParallel" if r["head_unit"] else "Linear")
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
    largest = max(r["grad_scales"].values())
    assert len(r["grad_errors"]) == (20 if r["tied"] else 21) if r["family"] == "llama" else len(r["grad_errors"]) > 40
    for name, error in r["grad_errors"].items():
        # Parameters whose exact gradient is zero (attention key biases) are compared at 1e-5 of the largest gradient.
        scale = max(r["grad_scales"][name], 1e-2 * largest)
        assert error <= 1e-5 * scale, (name, error, r["grad_scales"][name])
    if r["impl"] == "chunked":
        assert r["max_logit_rows"] <= CHUNK_ROWS  # never a [tokens, vocab] tensor, only chunks
    else:
        assert r["max_logit_rows"] >= TOKENS_PER_PROCESS - 12  # the watch does see full logits


@pytest.mark.slow
def test_fsdp_that_accelerate_would_replace_by_ddp_is_refused(fsdp_results):
    """TrainingArguments(fsdp=True, use_cpu=True) on 2 processes: accelerate silently uses DDP; the trainer refuses."""
    error = fsdp_results["fsdp_on_cpu"]["error"]
    assert error is not None and "FSDP was asked for" in error and "DistributedDataParallel" in error


@pytest.mark.slow
def test_tensor_parallel_head_is_refused_by_name(fsdp_results):
    """lm_head sharded over the vocabulary (parallelize_module / tp_plan): a ValueError before any loss, not a crash."""
    error = fsdp_results["tensor_parallel"]["error"]
    assert error is not None and "loss_impl='chunked' cannot be used" in error and "tensor parallelism" in error


def check_trainer_run(tmp_path, engine: str, model_class: str, port: int) -> None:
    """tests/fsdp_worker.py ``train``: 2 processes × 4 × 2 accumulation, chunked, checkpoints, a resume from step 2.
    The loss curve is the 1-process batch-16 run's (logits path), the resumed run ends where the full one did."""
    from test_trainer import assert_same_training, train_losses
    from tiny import train_tiny

    worker = [os.path.join(HERE, "fsdp_worker.py"), "train", str(tmp_path), "llama", "chunked", engine]
    python = deepspeed_python() if engine.startswith("zero3") else sys.executable
    if engine.endswith("accelerate-config"):  # the shipped accelerate config, launched as a user launches it
        name = "deepspeed_zero3.yaml" if engine.startswith("zero3") else "fsdp.yaml"
        config = os.path.join(ROOT, "configs", "accelerate", name)
        launcher = [python, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", "2",
                    "--mixed_precision", "no"]  # fmt: skip
        run_two_processes([*launcher, "--main_process_port", str(port), *worker])
    else:
        torchrun(worker, port=port, python=python)
    runs = {}
    for run in ("full", "resumed"):
        with open(tmp_path / f"{run}.json") as f:
            info = json.load(f)
        assert info["world_size"] == 2
        expected = "DistributedType.DEEPSPEED" if engine.startswith("zero3") else "DistributedType.FSDP"
        assert info["distributed_type"] == expected
        assert info["model_class"] == model_class and info["chunked_head_verified"]
        assert "checkpoint-4" in info["checkpoints"]
        runs[run] = (info["history"], torch.load(tmp_path / f"{run}.pt"), None)
    assert "checkpoint-2" in os.listdir(tmp_path / "full")
    tvd = {"gamma": 0.3, "min_weight": 0.1, "label_smoothing": 0.1}  # fsdp_worker.TVD
    single = train_tiny("llama", str(tmp_path / "one"), per_device_batch=16, grad_accum=1, tvd=tvd, max_steps=4)
    assert_same_training(runs["full"], single, loss_rtol=1e-5)
    # the resumed run (steps 1-2 from the checkpoint's log, 3-4 trained again) ends on the same losses and parameters
    resumed, full = train_losses(runs["resumed"][0]), train_losses(runs["full"][0])
    assert len(resumed) == len(full) == 4 and resumed == pytest.approx(full, rel=1e-6)
    for name, value in runs["full"][1].items():
        torch.testing.assert_close(runs["resumed"][1][name], value, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_trainer_under_fsdp2_trains_saves_and_resumes_like_one_process(tmp_path):
    """TVDTrainer.train() under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (FSDP2; accelerate's
    own FSDP2 path, made to run on CPU by fsdp_worker._fsdp_on_cpu)."""
    check_trainer_run(tmp_path, "fsdp2-accelerate-config", "FSDPLlamaForCausalLM", port=29616)
