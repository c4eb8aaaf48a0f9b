"""The benchmark results file and the tables generated from it.

Every measurement of ``python -m benchmarks.bench`` is one JSON row of ``benchmarks/results.jsonl``: the variant's
numbers (times of every repeat, median, minimum, extra peak memory, ratios to its baseline, loss error against the
float64 reference) plus what it was measured with (``settings``, ``environment``: device, torch, transformers,
load average, ``date_utc``) and how (``command``), under a ``run`` label shared by the rows of one invocation.

The tables in ``BENCHMARKS.md`` are generated from those rows (``python -m benchmarks.bench --table``): each sits
between two marker comments that say which runs it shows and in which layout::

    <!-- bench-table runs=cpu_n2048_v32000_fp32 layout=full -->
    ... generated ...
    <!-- /bench-table -->

Layouts: ``full`` (every column of a loss run), ``compact`` (times and memory), ``train`` (training steps only,
one block per run), ``chunks`` (the fused path's chunk-size runs, against materialised γ-CE in the same run).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "DEFAULT_MARKDOWN",
    "DEFAULT_RESULTS",
    "LAYOUTS",
    "append_rows",
    "read_rows",
    "render_table",
    "report_rows",
    "update_markdown",
]

DEFAULT_RESULTS = os.path.join("benchmarks", "results.jsonl")
DEFAULT_MARKDOWN = "BENCHMARKS.md"

_MARKER = re.compile(
    r"(?P<open><!-- bench-table (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /bench-table -->)", re.DOTALL
)


# ----------------------------------------------------------------------------------------------- the rows
def report_rows(report: dict[str, Any], run: str) -> list[dict[str, Any]]:
    """One row per variant of a ``bench.run`` report (plus its ``command``), labelled ``run``."""
    env = report["environment"]
    return [
        {
            "run": run,
            "date_utc": env.get("date_utc"),
            "variant": name,
            **result,
            "command": report.get("command"),
            "settings": report["settings"],
            "environment": env,
        }
        for name, result in report["results"].items()
    ]


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a results file (none when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def append_rows(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` to the results file, one JSON object a line."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------- tables
def _ratio(value: float | None) -> str:
    return f"{value:.2f}×" if value is not None else "–"


def _mib(row: dict[str, Any]) -> str:
    return f"{row['extra_peak_bytes'] / 2**20:.1f}" + (" (≤)" if row.get("upper_bound_only") else "")


def _loss_table(runs: dict[str, list[dict[str, Any]]], *, full: bool) -> list[str]:
    """Times and memory of every variant; ``full`` adds the baseline's name and the error against float64."""
    head = "| variant | median fwd+bwd (s) " if full else "| variant | median (s) "
    head += "| median vs baseline | min (s) | min vs baseline | extra peak memory (MiB) | memory vs baseline |"
    lines = [
        head + (" baseline | loss err vs float64 |" if full else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---|---:|" if full else ""),
    ]
    for rows in runs.values():
        for r in rows:
            line = (
                f"| {r['variant']} | {r['median_s']:.4f} | {_ratio(r.get('time_ratio'))} | {r['min_s']:.4f} "
                f"| {_ratio(r.get('min_time_ratio'))} | {_mib(r)} | {_ratio(r.get('memory_ratio'))} |"
            )
            if full:
                err = f"{r['abs_err_vs_float64']:.1e}" if "abs_err_vs_float64" in r else "–"
                line += f" {r['baseline']} | {err} |"
            lines.append(line)
    return lines


_TRAINER_NAMES = {
    "train_step_stock_trainer": "stock `Trainer`",
    "train_step_tvd_trainer": "`TVDTrainer`",
    "train_step_tvd_trainer_chunked": "`TVDTrainer`, chunked",
}


def _train(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    several = len(runs) > 1  # then a column says which batch shape each block is
    head = "| tokens per step " if several else ""
    lines = [
        f"{head}| variant | median step (s) | vs stock | min (s) | vs stock | extra peak memory (MiB) | vs stock |",
        ("|---:" if several else "") + "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rows in runs.values():
        for r in rows:
            if r.get("group") != "train":
                continue
            shape = f"| {r['settings']['train_batch']} × {r['settings']['train_seq_len']} " if several else ""
            lines.append(
                f"{shape}| {_TRAINER_NAMES.get(r['variant'], r['variant'])} | {r['median_s']:.3f} "
                f"| {_ratio(r.get('time_ratio'))} | {r['min_s']:.3f} | {_ratio(r.get('min_time_ratio'))} "
                f"| {_mib(r)} | {_ratio(r.get('memory_ratio'))} |"
            )
    return lines


def _chunks(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| chunk rows | variant | median (s) | min (s) | median vs materialised γ-CE | extra peak memory (MiB) | run |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for run, rows in runs.items():
        by_name = {r["variant"]: r for r in rows}
        reference = by_name.get("linear_gamma_ce_materialised")
        for name in ("linear_gamma_ce_materialised", "linear_gamma_ce_fused", "linear_gamma_ce_fused_recompute"):
            r = by_name.get(name)
            if r is None:
                continue
            # chunk_rows: what "auto" meant for a run recorded without --chunk-size
            chunk = r["settings"].get("chunk_size") or r.get("chunk_rows") or "auto"
            chunk = "–" if name == "linear_gamma_ce_materialised" else str(chunk)
            ratio = _ratio(r["median_s"] / reference["median_s"]) if reference else "–"
            lines.append(
                f"| {chunk} | {name} | {r['median_s']:.2f} | {r['min_s']:.2f} | {ratio} | {_mib(r)} | `{run}` |"
            )
    return lines


LAYOUTS: dict[str, Callable[[dict[str, list[dict[str, Any]]]], list[str]]] = {
    "full": functools.partial(_loss_table, full=True),
    "compact": functools.partial(_loss_table, full=False),
    "train": _train,
    "chunks": _chunks,
}


def render_table(rows: Sequence[dict[str, Any]], runs: Sequence[str], layout: str) -> str:
    """The markdown table of ``runs`` (in that order) in ``layout``; ``ValueError`` names a run or layout missing."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown table layout {layout!r}; choose from {sorted(LAYOUTS)}")
    selected: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        selected[run] = [r for r in rows if r["run"] == run]
        if not selected[run]:
            raise ValueError(f"run {run!r} has no rows in the results file")
    return "\n".join(LAYOUTS[layout](selected)) + "\n"


def _parse_spec(spec: str) -> tuple[list[str], str]:
    fields = dict(item.split("=", 1) for item in spec.split() if "=" in item)
    if "runs" not in fields or "layout" not in fields:
        raise ValueError(f"table marker {spec!r} needs runs=NAME[,NAME...] and layout=NAME")
    return fields["runs"].split(","), fields["layout"]


def update_markdown(text: str, rows: Sequence[dict[str, Any]]) -> str:
    """``text`` with every table between ``bench-table`` markers regenerated from ``rows``."""

    def replace(match: re.Match[str]) -> str:
        runs, layout = _parse_spec(match["spec"])
        return match["open"] + render_table(rows, runs, layout) + match["close"]

    return _MARKER.sub(replace, text)
