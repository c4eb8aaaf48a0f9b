"""Resume after a hard kill, atomic checkpoints, the non-finite guard, failure of one process, property tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import train_tiny
from transformers.trainer_utils import get_last_checkpoint

from hf_tvd_loss import gamma_cross_entropy
from hf_tvd_loss.callbacks import NonFiniteLossError, last_complete_checkpoint
from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "resume_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def start_worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def finish_worker(proc: subprocess.Popen, expect_kill: bool = False) -> None:
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # timed out
            proc.kill()
            proc.communicate()
    if expect_kill:
        assert proc.returncode == -9, stderr[-3000:]
    else:
        assert proc.returncode == 0, stderr[-3000:]


def run_worker(*args: str, expect_kill: bool = False) -> None:
    finish_worker(start_worker(*args), expect_kill=expect_kill)


def history_losses(out_dir, key="loss"):
    with open(os.path.join(out_dir, "history.json")) as f:
        return {row["step"]: row[key] for row in json.load(f) if key in row}


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    # the uninterrupted run and the one killed after checkpoint-4 (before checkpoint-6) are independent: run together
    uninterrupted, killed = start_worker(whole), start_worker(broken, "--kill_at", "5")
    finish_worker(uninterrupted)
    finish_worker(killed, expect_kill=True)
    assert last_complete_checkpoint(broken).endswith("checkpoint-4")
    # simulate a kill in the middle of writing checkpoint-6: a folder with a truncated weights file
    partial = os.path.join(broken, "checkpoint-6")
    os.makedirs(partial)
    with open(os.path.join(partial, "model.safetensors"), "wb") as f:
        f.write(b"\x00" * 100)
    assert get_last_checkpoint(broken) == partial  # the stock rule would resume from the broken folder
    assert last_complete_checkpoint(broken).endswith("checkpoint-4")

    run_worker(broken, "--resume")
    a, b = history_losses(whole), history_losses(broken)
    assert sorted(b) == list(range(1, 9))  # steps 1-4 come back from the checkpoint, 5-8 are retrained
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-6), step
    assert history_losses(broken, "gamma") == pytest.approx({s: history_losses(whole, "gamma")[s] for s in b})
    final_a = torch.load(os.path.join(whole, "final_state.pt"))
    final_b = torch.load(os.path.join(broken, "final_state.pt"))
    assert max((final_a[k] - final_b[k]).abs().max().item() for k in final_a) <= 1e-6
    # rotation (save_total_limit=2) kept the newest complete checkpoints
    kept = sorted(d for d in os.listdir(broken) if d.startswith("checkpoint-"))
    assert kept == ["checkpoint-6", "checkpoint-8"]
    assert all(os.path.isfile(os.path.join(broken, d, "tvd_checkpoint_complete.json")) for d in kept)


def test_resume_refuses_incomplete_checkpoint(tmp_path):
    from test_trainer import _trainer_kwargs

    from hf_tvd_loss import TVDArguments, TVDTrainer

    os.makedirs(tmp_path / "checkpoint-3")
    trainer = TVDTrainer(**_trainer_kwargs(tmp_path, max_steps=1), tvd_args=TVDArguments())
    with pytest.raises(ValueError, match="not completely written"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    with pytest.raises(ValueError, match="holds no completely written"):
        trainer.train(resume_from_checkpoint=True)


class Poison:
    """Makes the model's logits NaN on chosen forward calls (a poisoned batch)."""

    def __init__(self, model, calls: set[int]):
        self.calls, self.count = calls, 0
        model.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.count += 1
        if self.count in self.calls:
            output.logits = output.logits * float("nan")
        return output


def test_nonfinite_error_stops_before_the_update(tmp_path):
    from tiny import tiny_model

    model = tiny_model("llama")
    Poison(model, {3})  # micro-batch 3 = the first half of step 2 (accumulation 2)
    snapshots = []

    from transformers import TrainerCallback

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    with pytest.raises(NonFiniteLossError, match="optimisation step 2 .*weights are unchanged"):
        train_tiny(
            "llama", str(tmp_path), per_device_batch=4, grad_accum=2, max_steps=4, model=model,
            tvd=dict(gamma=0.1), extra_args=dict(max_grad_norm=1.0), callbacks=[Snap()],
        )  # fmt: skip
    assert len(snapshots) == 1
    final = model.state_dict()
    assert all(torch.isfinite(v).all() for v in final.values())
    assert all(torch.equal(final[k], snapshots[0][k]) for k in final)  # the poisoned step changed nothing


def test_nonfinite_skip_counts_and_keeps_weights_finite(tmp_path):
    from tiny import tiny_model

    model = tiny_model("llama")
    Poison(model, {3})
    history, state, _ = train_tiny(
        "llama", str(tmp_path), per_device_batch=4, grad_accum=2, max_steps=4, model=model,
        tvd=dict(gamma=0.1, nonfinite_policy="skip"),
    )  # fmt: skip
    skipped = [row["nonfinite_skipped_steps"] for row in history if "nonfinite_skipped_steps" in row]
    assert skipped == [0.0, 1.0, 1.0, 1.0]
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.slow
def test_one_failing_process_ends_the_run_instead_of_hanging(tmp_path):
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
        "no", "--dynamo_backend", "no", "--main_process_port", "29533", WORKER, str(tmp_path), "--fail_rank_at", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**ENV, "ACCELERATE_USE_CPU": "1"})
    assert proc.returncode != 0
    assert "simulated failure on rank 1 at step 2" in proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "final_state.pt")


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 6),
    vocab=st.integers(2, 40),
    gamma=st.one_of(st.sampled_from([0.0, 1e-7, 1.0]), st.floats(0, 1)),
    min_weight=st.one_of(st.just(0.0), st.floats(0, 1)),
    eps=st.one_of(st.just(0.0), st.floats(0, 0.99)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    shift=st.booleans(),
    ignore_rate=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_finite_and_equal_to_reference(
    batch, seq, vocab, gamma, min_weight, eps, dtype, scale, shift, ignore_rate, seed
):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, seq, vocab, generator=g) * scale).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[torch.rand(batch, seq, generator=g) < ignore_rate] = -100
    kw = dict(gamma=gamma, min_weight=min_weight, label_smoothing=eps, shift_labels=shift)
    x = logits.clone().requires_grad_()
    loss = gamma_cross_entropy(x, labels, **kw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x64 = logits.double().requires_grad_()
    ref = gamma_cross_entropy_reference(x64, labels, **kw)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), atol=1e-4, rtol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=tol, rtol=1e-3)
