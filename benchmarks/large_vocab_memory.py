"""Peak memory of a training step and of an evaluation pass at Gemma 3's vocabulary (V = 262,144), CPU.

A Gemma3ForCausalLM built from a config (no download): hidden 640, 2 decoder layers, tied embeddings, fp32,
like gemma-3-270m's head. Each measurement runs in its own subprocess and reports the peak resident memory
(``VmHWM``, reset after the model and data are built) minus the resident memory at that point:

* ``train``: ``TVDTrainer.train()`` for 2 steps of 4 × 128 tokens (AdamW; its state is created at step 1);
* ``eval``: the task trainer's evaluation (``TaskTrainer``: γ-CE loss plus calibration, as the task scripts
  run it) on 32 rows of 128 tokens, ``per_device_eval_batch_size`` 8.

Usage (from a checkout; the package on PYTHONPATH is the one measured)::

    PYTHONPATH=. python benchmarks/large_vocab_memory.py --out benchmarks/large_vocab_memory_after.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

VOCAB, HIDDEN, SEQ = 262_144, 640, 128


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _child(mode: str, impl: str) -> dict:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, TrainingArguments

    from hf_tvd_loss import TVDArguments, TVDTrainer
    from hf_tvd_loss.tasks.trainers import TaskTrainer

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, max_position_embeddings=4 * SEQ, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(32):
        ids = torch.randint(3, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: SEQ // 4] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    out = tempfile.mkdtemp()
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=4, per_device_eval_batch_size=8, max_steps=2,
        learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    tvd = TVDArguments(gamma=0.1, min_weight=0.2, loss_impl=impl)
    if mode == "train":
        trainer = TVDTrainer(model=model, args=args, train_dataset=rows, tvd_args=tvd)
    else:
        trainer = TaskTrainer(model=model, args=args, tvd_args=tvd)
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current resident size
        f.write("5")
    before = _rss("VmRSS")
    if mode == "train":
        trainer.train()
        metrics = {k: v for k, v in trainer.state.log_history[-2].items() if isinstance(v, float)}
    else:
        metrics = trainer.evaluate(rows)
    peak = _rss("VmHWM")
    return {
        "mode": mode, "loss_impl": impl, "rss_before_mib": before / 2**20, "peak_rss_mib": peak / 2**20,
        "extra_peak_mib": (peak - before) / 2**20, "metrics": metrics,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--modes", default="train,eval")
    p.add_argument("--impls", default="logits,chunked")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(_child(*args._child)))
        return
    results = []
    for mode in args.modes.split(","):
        for impl in args.impls.split(","):
            run = subprocess.run(
                [sys.executable, __file__, "--out", args.out, "--_child", mode, impl],
                capture_output=True, text=True, env=os.environ,
            )  # fmt: skip
            if run.returncode != 0:
                results.append({"mode": mode, "loss_impl": impl, "error": run.stderr[-2000:]})
            else:
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"command": "python benchmarks/large_vocab_memory.py " + " ".join(sys.argv[1:]),
                   "results": results}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
