"""Cost of the loss's metrics in a training step, measured in one process with the variants interleaved.

`python -m benchmarks.bench --train-metrics` times each trainer in its own subprocess, one after the other; on a
shared machine a 3 % question drowns in the load changing between them. Here every variant does one forward +
backward of the same model on the same batch in turn (round-robin, ``--rounds`` times, after a warm-up), so a
slow period hits all of them; the minimum over rounds is the least disturbed. Variants:

* ``stock``: ``model(**batch).loss`` (transformers' own loss), backward;
* ``tvd`` / ``tvd_metrics``: ``TVDTrainer.compute_loss`` (logits path) with ``extra_metrics`` off / on;
* ``chunked`` / ``chunked_metrics``: the same with ``loss_impl="chunked"``;
* with ``--before DIR``: ``tvd_before`` / ``chunked_before``, the same two from another checkout of the package
  (loaded under another module name), e.g. the commit before the metrics were added.

Model: the bench's tiny Llama (2 layers, d = 512, V = 32000, untied head), batch 8 × 128 tokens, fp32, CPU.

``--eval``: the same variants as an evaluation step (``model.eval()``, no gradient, no backward): the cost of the
metrics that evaluation computes by default (``TVDLossMixin.tvd_eval_extra_metrics``), against the same trainer with
them switched off.

Usage::

    git archive <commit> | tar -x -C /tmp/before
    PYTHONPATH=. python benchmarks/metrics_overhead.py --before /tmp/before/hf_tvd_loss --out overhead.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time


def _load_package(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, f"{path}/__init__.py", submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--before", default=None, help="path of another checkout's hf_tvd_loss package folder")
    p.add_argument("--out", required=True)
    p.add_argument("--eval", action="store_true", help="time evaluation steps (no gradient) instead of training steps")
    args = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    import hf_tvd_loss

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).train(not args.eval)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (8, 128), generator=g)
    labels = ids.clone()
    labels[:, :32] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    training = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True)
    gce = dict(gamma=0.1, min_weight=0.3, label_smoothing=0.1)
    trainers = {}
    packages = {"": hf_tvd_loss}
    if args.before:
        packages["_before"] = _load_package(args.before, "hf_tvd_loss_before")
    for suffix, package in packages.items():
        for impl, label in (("logits", "tvd"), ("chunked", "chunked")):
            trainers[f"{label}{suffix}"] = package.TVDTrainer(
                model=model, args=training, tvd_args=package.TVDArguments(**gce, loss_impl=impl)
            )
            trainers[f"{label}{suffix}"].tvd_eval_extra_metrics = False  # "off": in evaluation too
            if not suffix:
                trainers[f"{label}_metrics"] = hf_tvd_loss.TVDTrainer(
                    model=model, args=training,
                    tvd_args=hf_tvd_loss.TVDArguments(**gce, loss_impl=impl, extra_metrics=True),
                )  # fmt: skip
    count = (labels[:, 1:] != -100).sum().float()

    def step(name: str) -> float:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(not args.eval):
            if name == "stock":
                loss = model(**batch).loss
            else:
                loss = trainers[name].compute_loss(model, batch, num_items_in_batch=None if args.eval else count)
        if not args.eval:
            loss.backward()
        return time.perf_counter() - t0

    names = ["stock", *trainers]
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up (and the chunked path's first-use check)
        step(n)
    for _ in range(args.rounds):
        for n in names:
            times[n].append(step(n))
    base_min, base_med = min(times["stock"]), statistics.median(times["stock"])
    results = {
        n: {"min_s": min(t), "median_s": statistics.median(t), "min_ratio": min(t) / base_min,
            "median_ratio": statistics.median(t) / base_med, "seconds": t}
        for n, t in times.items()
    }  # fmt: skip
    import os

    report = {"command": "python benchmarks/metrics_overhead.py " + " ".join(sys.argv[1:]),
              "load_average_1min_end": os.getloadavg()[0], "torch_threads": torch.get_num_threads(),
              "results": results}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("| variant | min (s) | min vs stock | median (s) | median vs stock |")
    print("|---|---:|---:|---:|---:|")
    for n, r in results.items():
        print(f"| {n} | {r['min_s']:.3f} | {r['min_ratio']:.3f}× | {r['median_s']:.3f} | {r['median_ratio']:.3f}× |")


if __name__ == "__main__":
    main()
