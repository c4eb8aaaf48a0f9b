"""Two real processes (gloo on CPU) × 4 per device × 2 accumulation = one process with batch 16."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_trainer import TVD, assert_same_training
from tiny import train_tiny

FAMILIES = ["llama", "t5", "bart", "llama:chunked", "bart:chunked", "bert_tok", "llama_cls"]
UNSCORED = ["unscored-all", "unscored-one-shard"]  # run last: the first raises on both processes
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    # `--cpu --num_processes 2` silently runs ONE process; --multi_gpu with use_cpu=True (set in
    # train_tiny) gives two gloo processes on CPU.
    cmd = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
        os.path.join(HERE, "ddp_worker.py"), str(out), ",".join(FAMILIES + UNSCORED), json.dumps(TVD),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.slow
def test_unscored_step_refused_across_processes(two_process_runs):
    """A step with no scored label on any process is refused on every process at the same step; one whose
    targets are all on the other process trains (its empty shard adds 0 to the global sum)."""
    for rank in (0, 1):
        with open(two_process_runs / f"unscored-all-rank{rank}.json") as f:
            refused = json.load(f)
        assert "training step 1 has no scored target" in refused.get("error", ""), refused
        assert "on all 2 processes" in refused["error"]
        with open(two_process_runs / f"unscored-one-shard-rank{rank}.json") as f:
            trained = json.load(f)
        assert "error" not in trained, trained
        assert trained["steps"] == 2 and all(loss > 0 for loss in trained["loss"]), trained


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_two_processes_match_one(family, two_process_runs, tmp_path):
    with open(two_process_runs / f"{family}.json") as f:
        result = json.load(f)
    assert result["world_size"] == 2
    state = torch.load(two_process_runs / f"{family}.pt")
    # the single-process reference always uses the logits path
    single = train_tiny(family.partition(":")[0], str(tmp_path), per_device_batch=16, grad_accum=1, tvd=TVD)
    assert_same_training((result["history"], state, None), single)
    # evaluation metrics are token-weighted over both processes' shards
    single_eval = single[2].evaluate(single[2].train_dataset)
    for key in ("eval_loss", "eval_nll", "eval_tvd_weight_mean"):
        assert result["eval"][key] == pytest.approx(single_eval[key], rel=1e-4), key
