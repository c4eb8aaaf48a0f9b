"""Keep the frozen blocks' outputs (``--cache_frozen_outputs``) on disk between study processes.

The in-memory cache (``hf_tvd_loss.tasks.modeling._PREFIX_CACHES``) is keyed by a fingerprint of the frozen weights
and each example's token ids, so a file written by one process is only ever hit by a later one with the same frozen
model and the same tokens. Filling it costs about 20 minutes of 2 CPU cores for the 2,940 Bible verses; loading it,
seconds. Run from the repository root to fill it for a study config (every split, as the runs tokenize it):

    python docs/loss_comparison_classification_smollm2/prefix_cache.py configs/compare/classification_smollm2_bible_long.yaml
"""

from __future__ import annotations

import os
import sys

import torch

from hf_tvd_loss.tasks import modeling

PATH = os.path.join("reports", "smollm2_bible_prefix_cache.pt")


def load(path: str = PATH) -> int:
    """Load the file into the in-memory cache (if it exists); returns the number of cached examples."""
    if not os.path.exists(path):
        return 0
    stored = torch.load(path, weights_only=True)
    for fingerprint, entries in stored.items():
        modeling._PREFIX_CACHES.setdefault(fingerprint, {}).update(entries)
    return sum(len(v) for v in stored.values())


def save(path: str = PATH) -> int:
    """Write the in-memory cache to ``path`` (through a temporary file, so a killed write leaves the old file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(modeling._PREFIX_CACHES, path + ".tmp")
    os.replace(path + ".tmp", path)
    return sum(len(v) for v in modeling._PREFIX_CACHES.values())


def fill(config_path: str) -> None:
    import yaml

    from hf_tvd_loss.tasks import get_task
    from hf_tvd_loss.tasks.run import build, prepare

    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    task = get_task(config["task"])
    argv = [item for key, value in config["task_args"].items() for item in (f"--{key}", str(value))]
    out = os.path.join("reports", "_prefix_cache_fill")
    built = build(prepare(task, [*argv, "--output_dir", out, "--overwrite_output_dir", "true", "--seed", "0"]))
    print(f"loaded {load()} cached examples", flush=True)
    splits = {"train": built.trainer.train_dataset, **built.datasets}
    for name, dataset in splits.items():
        if dataset is None:
            continue
        built.trainer.predict(dataset, metric_key_prefix=f"fill_{name}")
        print(f"{name}: {len(dataset)} examples, cache now {save()}", flush=True)


if __name__ == "__main__":
    fill(sys.argv[1])
