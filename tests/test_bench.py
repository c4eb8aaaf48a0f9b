"""Smoke test of the benchmark script: tiny shapes, every variant reported, files written. No timing asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hf_tvd_loss.bench import HIDDEN_VARIANTS, LOGIT_VARIANTS, TRAIN_VARIANTS


def test_quick_benchmark_writes_all_variants(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "hf_tvd_loss.bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    markdown = (out / "bench.md").read_text()

    assert report["settings"]["tokens"] == 64 and report["settings"]["vocab"] == 512
    for key in ("device", "torch", "transformers"):
        assert report["environment"][key]
    results = report["results"]
    assert set(results) == set(LOGIT_VARIANTS + HIDDEN_VARIANTS + TRAIN_VARIANTS)
    for name, r in results.items():
        assert f"| {name} |" in markdown
        assert len(r["seconds"]) >= 1 and r["median_s"] > 0, name
        assert isinstance(r["extra_peak_bytes"], int), name
        assert r["time_ratio"] is not None and r["min_s"] <= r["median_s"], name
    # Every loss variant computes what it claims: compared with the float64 reference on the same inputs.
    for name in LOGIT_VARIANTS + HIDDEN_VARIANTS:
        assert results[name]["abs_err_vs_float64"] < 1e-4, (name, results[name]["abs_err_vs_float64"])
    assert results["cross_entropy"]["time_ratio"] == 1.0
    assert results["linear_cross_entropy"]["time_ratio"] == 1.0
    # The fused and materialised γ-CE compute the same loss.
    fused = results["linear_gamma_ce_fused"]["loss"]
    assert abs(fused - results["linear_gamma_ce_materialised"]["loss"]) < 1e-4
    assert abs(fused - results["linear_gamma_ce_fused_recompute"]["loss"]) < 1e-4


def test_bad_arguments_exit_with_an_error(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run(
        [sys.executable, "-m", "hf_tvd_loss.bench", "--quick", "--out", str(tmp_path), "--variants", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert proc.returncode != 0 and "unknown --variants" in proc.stderr
