"""Evaluation by generation on a decoder-only model: time per example, batched (left padding) vs one at a time.

The decoder-only summarization and translation scripts generate a completion for every evaluation example
(:func:`hf_tvd_loss.tasks.generation.generate_completions`). This times that function on the same prompts with
``--batch-size`` examples per ``generate`` call and with one per call (what a loop over examples would do),
interleaved round-robin ``--rounds`` times so that load changes on a shared machine hit both alike, and checks that
both produce the same tokens (greedy decoding). Default model: a small Llama built from a config (no download);
``--model`` takes a local pretrained folder (``python scripts/prepare_model.py --output_dir models/smollm2-135m-instruct``)
and ``--data`` a prompt → target ``.jsonl`` (``document``/``summary``: ``python scripts/prepare_data.py summarization``).

Usage::

    PYTHONPATH=. python benchmarks/generation_eval.py --out benchmarks/generation_eval/tiny_llama.json
    PYTHONPATH=. python benchmarks/generation_eval.py --model models/smollm2-135m-instruct \\
        --data data/bible_summary/validation.jsonl --examples 16 --batch-size 8 --max-source-tokens 256 \\
        --max-new-tokens 48 --rounds 1 --out benchmarks/generation_eval/smollm2_bible_summary.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _tiny_llama(vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _rows(args: argparse.Namespace) -> tuple[object, list[dict[str, list[int]]], int, int | None]:
    """(model, prompt → target rows, pad id, eos id)."""
    import torch

    if args.model is None:
        model = _tiny_llama(4000)
        g = torch.Generator().manual_seed(0)
        rows = []
        for _ in range(args.examples):
            length = int(torch.randint(args.max_source_tokens // 2, args.max_source_tokens + 1, (1,), generator=g))
            prompt = torch.randint(3, 4000, (length,), generator=g).tolist()
            rows.append({"input_ids": prompt + [2], "labels": [-100] * length + [2]})
        return model, rows, 0, None  # random weights: no eos, every completion runs to max_new_tokens
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_tvd_loss.tasks.prompting import encode_prompt_completion, has_chat_template, labels_for, truncate_text

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    chat = has_chat_template(tokenizer)
    with open(args.data, encoding="utf-8") as f:
        raw = [json.loads(line) for line in f][: args.examples]
    rows = []
    for row in raw:
        source = truncate_text(tokenizer, row["document"], args.max_source_tokens)
        prompt = f"Summarize the following text.\n\n{source}\n\nSummary:\n"
        ids, scored = encode_prompt_completion(
            tokenizer, prompt.strip() if chat else prompt, row["summary"], chat=chat
        )
        rows.append({"input_ids": ids, "labels": labels_for(ids, scored)})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model, rows, pad, None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local pretrained causal LM folder (default: a tiny Llama)")
    p.add_argument("--data", default=None, help="document/summary .jsonl (with --model)")
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-source-tokens", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.model is not None and args.data is None:
        p.error("--model needs --data")

    import numpy as np
    import torch

    from hf_tvd_loss.tasks.generation import generate_completions

    if args.threads:
        torch.set_num_threads(args.threads)
    model, rows, pad, eos = _rows(args)
    settings = {"pad_token_id": pad, "max_new_tokens": args.max_new_tokens, "num_beams": 1, "do_sample": False}
    if eos is not None:
        settings["eos_token_id"] = eos

    def batched() -> np.ndarray:
        return generate_completions(model, rows, batch_size=args.batch_size, **settings)[0]

    def alone() -> list[list[int]]:
        return [generate_completions(model, [row], batch_size=1, **settings)[0][0].tolist() for row in rows]

    times: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    outputs: dict[str, object] = {}
    for _ in range(args.rounds):
        for name, fn in (("batched", batched), ("one_at_a_time", alone)):
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    strip = lambda r: [t for t in r if t != -100]  # noqa: E731
    same = [strip(a) for a in outputs["batched"].tolist()] == [strip(b) for b in outputs["one_at_a_time"]]  # type: ignore[union-attr]
    n = len(rows)
    results = {name: {"min_s_per_example": min(t) / n, "median_s_per_example": statistics.median(t) / n, "seconds": t}
               for name, t in times.items()}  # fmt: skip
    report = {
        "command": "python benchmarks/generation_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": os.path.basename(os.path.normpath(args.model)) if args.model else "tiny llama (4 layers, d=256, V=4000)",
        "examples": n, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "prompt_tokens_mean": statistics.mean(sum(1 for x in r["labels"] if x == -100) for r in rows),
        "torch_threads": torch.get_num_threads(), "load_average_1min_end": os.getloadavg()[0],
        "same_tokens": same, "speedup_min": min(times["one_at_a_time"]) / min(times["batched"]), "results": results,
    }  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("| mode | s / example (min) | s / example (median) |")
    print("|---|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['min_s_per_example']:.3f} | {r['median_s_per_example']:.3f} |")
    print(f"speed-up of batching (min): {report['speedup_min']:.2f}×; same tokens: {same}")
    return report


if __name__ == "__main__":
    main()
