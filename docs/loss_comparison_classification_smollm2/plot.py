"""Accuracy, ECE (before and after temperature scaling) and the fit of the noisy training labels against the noise
rate, one line per loss (mean over seeds), every seed as a point; read from runs/*/result.json of a study folder.
Where the runs judged the model selected on validation too, a panel of its accuracy; where they evaluated the
validation split during training, validation_curves.png: validation accuracy per epoch, per loss and noise rate.

    python docs/loss_comparison_classification_smollm2/plot.py docs/loss_comparison_classification_smollm2
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("test_accuracy", "clean-test accuracy"),
    ("test_ece", "clean-test ECE (15 bins)"),
    ("test_ece_ts", "ECE after temperature scaling"),
    ("train_noisy_accuracy", "accuracy on the noisy training labels"),
]


SELECTED = ("selected_test_accuracy", "clean-test accuracy, model selected on validation")


def curves(folder: str, results: list[dict]) -> str | None:
    """Validation accuracy after each epoch (mean over seeds), one panel per noise rate, one line per loss."""
    series: dict[float, dict[str, dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for data in results:
        rows = [r for r in data.get("history", []) if "eval_accuracy" in r and "epoch" in r]
        seen = set()
        for row in rows:  # the final evaluation repeats the last epoch's: keep the first of each epoch
            if row["epoch"] not in seen:
                seen.add(row["epoch"])
                series[float(data["noise"])][data["loss"]][row["epoch"]].append(row["eval_accuracy"])
    if not any(len(epochs) > 1 for by_loss in series.values() for epochs in by_loss.values()):
        return None
    noises = sorted(series)
    losses = list(dict.fromkeys(data["loss"] for data in results))
    colors = {loss: f"C{i}" for i, loss in enumerate(losses)}  # one colour per loss in every panel
    fig, axes = plt.subplots(1, len(noises), figsize=(5.5 * len(noises), 3.8), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        for loss in [name for name in losses if name in series[noise]]:
            epochs = series[noise][loss]
            xs = sorted(epochs)
            ax.plot(
                xs,
                [sum(epochs[x]) / len(epochs[x]) for x in xs],
                color=colors[loss],
                label=f"{loss} ({len(epochs[xs[0]])} seed{'s' if len(epochs[xs[0]]) > 1 else ''})",
            )
        ax.set_title(f"validation accuracy per epoch, {noise:.0%} noisy training labels", fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.join(folder, "validation_curves.png")
    fig.savefig(out, dpi=110)
    return out


def main(folder: str) -> str:
    runs, results = [], []
    for path in sorted(glob.glob(os.path.join(folder, "runs", "*", "result.json"))):
        with open(path) as f:
            data = json.load(f)
        results.append(data)
        runs.append((data["loss"], float(data["noise"]), data["metrics"]))
    losses = list(dict.fromkeys(loss for loss, _, _ in runs))
    panels = PANELS + ([SELECTED] if any(SELECTED[0] in m for _, _, m in runs) else [])
    curves(folder, results)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (metric, title) in zip(axes, panels):
        for i, loss in enumerate(losses):
            by_noise = defaultdict(list)
            for name, noise, metrics in runs:
                if name == loss and metrics.get(metric) is not None:
                    by_noise[noise].append(metrics[metric])
            noises = sorted(by_noise)
            if not noises:
                continue
            shift = (i - (len(losses) - 1) / 2) * 0.006  # so that the seeds of different losses do not overlap
            means = [sum(by_noise[n]) / len(by_noise[n]) for n in noises]
            (line,) = ax.plot([n + shift for n in noises], means, marker="o", label=loss)
            for n in noises:
                ax.plot([n + shift] * len(by_noise[n]), by_noise[n], "x", color=line.get_color(), alpha=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("symmetric label noise (×: single seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = os.path.join(folder, "accuracy_ece_vs_noise.png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))))
