"""Accuracy, ECE (before and after temperature scaling) and the fit of the noisy training labels against the noise
rate, one line per loss (mean over seeds), every seed as a point; read from runs/*/result.json of a study folder.

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


def main(folder: str) -> str:
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "runs", "*", "result.json"))):
        with open(path) as f:
            data = json.load(f)
        runs.append((data["loss"], float(data["noise"]), data["metrics"]))
    losses = list(dict.fromkeys(loss for loss, _, _ in runs))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.8))
    for ax, (metric, title) in zip(axes, PANELS):
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
