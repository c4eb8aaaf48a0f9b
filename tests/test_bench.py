"""Smoke test of the benchmark script: tiny shapes, every variant reported, files written. No timing asserts."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from benchmarks.bench import HIDDEN_VARIANTS, KERNEL_VARIANTS, LOGIT_VARIANTS, TRAIN_VARIANTS


def test_quick_benchmark_writes_all_variants(quick_benchmark):
    """``python -m benchmarks.bench --quick --jobs 1 --out FOLDER/bench``: run in the background from the end of
    collection (tests/conftest.py ``quick_benchmark``); this test, moved to the end of the session, reads it."""
    returncode, _, stderr, folder = quick_benchmark
    assert returncode == 0, stderr[-3000:]
    out = pathlib.Path(folder) / "bench"
    report = json.loads((out / "bench.json").read_text())
    markdown = (out / "bench.md").read_text()

    assert report["settings"]["tokens"] == 64 and report["settings"]["vocab"] == 512
    for key in ("device", "torch", "transformers"):
        assert report["environment"][key]
    results = report["results"]
    # the CUDA kernel variants are left out on CPU; torch's own linear_cross_entropy runs wherever torch runs
    torch_lce = ("linear_cross_entropy_torch_lce", "linear_gamma_ce_torch_lce")
    assert set(results) == set(LOGIT_VARIANTS + HIDDEN_VARIANTS + TRAIN_VARIANTS + torch_lce)
    for name, r in results.items():
        assert f"| {name} |" in markdown
        assert len(r["seconds"]) >= 1 and r["median_s"] > 0, name
        assert isinstance(r["extra_peak_bytes"], int), name
        assert r["time_ratio"] is not None and r["min_s"] <= r["median_s"], name
    # Every loss variant computes what it claims: compared with the float64 reference on the same inputs.
    for name in LOGIT_VARIANTS + HIDDEN_VARIANTS + torch_lce:
        assert results[name]["abs_err_vs_float64"] < 1e-4, (name, results[name]["abs_err_vs_float64"])
    assert results["cross_entropy"]["time_ratio"] == 1.0
    assert results["linear_cross_entropy"]["time_ratio"] == 1.0
    # The fused and materialised γ-CE compute the same loss.
    fused = results["linear_gamma_ce_fused"]["loss"]
    assert abs(fused - results["linear_gamma_ce_materialised"]["loss"]) < 1e-4
    assert abs(fused - results["linear_gamma_ce_fused_recompute"]["loss"]) < 1e-4
    # The CUDA kernel variants are not in the CPU default list (torch's own linear_cross_entropy is).
    assert set(results) & set(KERNEL_VARIANTS) == set(torch_lce)
    assert "chunked_backend='torch'" in markdown


def test_bad_arguments_exit_with_an_error(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(tmp_path), "--variants", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert proc.returncode != 0 and "unknown --variants" in proc.stderr


def test_kernel_variants_on_cpu_are_refused_before_any_work(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--device", "cpu", "--out", str(tmp_path / "o"),
         "--variants", "linear_cross_entropy,linear_gamma_ce_cce"],
        capture_output=True, text=True, env=env, cwd=root, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--variants linear_gamma_ce_cce cannot run: it needs --device cuda" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cut_cross_entropy_variants_compute_their_losses(kernels_on_cpu):
    """The cce variants' calls into the real package (its CPU implementation), against the float64 reference."""
    import torch

    from benchmarks import bench
    from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference

    s = bench.Settings(
        tokens=40, vocab=96, hidden=16, dtype="float32", device="cpu", repeats=1, gamma=0.1, min_weight=0.3,
        label_smoothing=0.1, ignore_fraction=0.2, seed=0, train_steps=1, train_batch=1, train_seq_len=8,
    )  # fmt: skip
    inputs = bench._make_inputs(s, "hidden")
    with torch.no_grad():
        logits = torch.nn.functional.linear(inputs["hidden"].double(), inputs["weight"].double())
    for name in ("linear_cross_entropy_cce", "linear_gamma_ce_cce"):
        assert bench.kernel_variant_problem(name, "cpu") is None
        value = bench._step(bench._loss_fn(name, s, inputs), [inputs["hidden"], inputs["weight"]])
        expected = float(gamma_cross_entropy_reference(logits, inputs["labels"], **bench._reference_settings(name, s)))
        assert abs(value - expected) < 1e-5, (name, value, expected)


def test_float64_references_in_blocks_equal_the_whole(monkeypatch):
    import torch

    from benchmarks import bench
    from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference

    s = bench.Settings(
        tokens=50, vocab=64, hidden=8, dtype="float32", device="cpu", repeats=1, gamma=0.1, min_weight=0.3,
        label_smoothing=0.1, ignore_fraction=0.2, seed=1, train_steps=1, train_batch=1, train_seq_len=8,
    )  # fmt: skip
    monkeypatch.setattr(bench, "_REFERENCE_BLOCK_ELEMENTS", 64 * 7)  # blocks of 7 rows, the last one partial
    for group, names in (("logits", ("cross_entropy", "gamma_ce")), ("hidden", ("linear_gamma_ce_fused",))):
        inputs = bench._make_inputs(s, group)
        with torch.no_grad():
            logits = inputs["logits"] if group == "logits" else inputs["hidden"] @ inputs["weight"].T
        got = bench._references(inputs, names, s, group)
        for n in names:
            whole = float(gamma_cross_entropy_reference(logits, inputs["labels"], **bench._reference_settings(n, s)))
            assert abs(got[n] - whole) < 1e-6, (n, got[n], whole)


def test_train_model_must_be_a_checkpoint_folder(tmp_path):
    import pytest

    from benchmarks import bench

    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        bench.main(["--quick", "--out", str(tmp_path / "o"), "--train-model", str(tmp_path)])
    assert not (tmp_path / "o").exists()


def test_benchmarks_md_tables_are_generated_from_the_results_file():
    """Every table of BENCHMARKS.md is what ``python -m benchmarks.bench --table`` makes of benchmarks/results.jsonl."""
    from benchmarks import results

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = results.read_rows(os.path.join(root, "benchmarks", "results.jsonl"))
    with open(os.path.join(root, "BENCHMARKS.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.count("<!-- bench-table ") == text.count("<!-- /bench-table -->") >= 6
    assert results.update_markdown(text, rows) == text
    for row in rows:  # every row says what, where, when and how
        assert row["run"] and row["variant"] and row["date_utc"] and row["command"], row.get("run")
        assert row["environment"]["torch"] and row["settings"]["tokens"], row["run"]


def test_rows_are_appended_under_a_new_run_label(tmp_path):
    from benchmarks import bench, results

    path = tmp_path / "results.jsonl"
    argv = ["--quick", "--no-train-step", "--variants", "cross_entropy,gamma_ce", "--results", str(path)]
    bench.main([*argv, "--run", "first"])
    rows = results.read_rows(str(path))
    assert [(r["run"], r["variant"]) for r in rows] == [("first", "cross_entropy"), ("first", "gamma_ce")]
    assert rows[1]["baseline"] == "cross_entropy" and rows[1]["settings"]["tokens"] == 64
    assert "--run first" in rows[0]["command"]
    table = results.render_table(rows, ["first"], "compact")
    assert "| gamma_ce |" in table and "| cross_entropy |" in table
    import pytest

    with pytest.raises(ValueError, match="'first' is already in"):
        bench.main([*argv, "--run", "first"])
    assert len(results.read_rows(str(path))) == 2
