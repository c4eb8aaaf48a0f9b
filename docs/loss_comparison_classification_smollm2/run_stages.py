"""Run the classification study stage by stage in ONE process, so that the cache of the frozen blocks' outputs
(--cache_frozen_outputs, in memory) is filled once and shared by every stage; each stage writes its report, and later
stages reuse every finished run (so does a restart). The cache is loaded from the file prefix_cache.py writes, when it
exists; otherwise the first run fills it in memory (about 25 minutes). From the repository root:

    nohup nice -n 10 python docs/loss_comparison_classification_smollm2/run_stages.py > reports/cls_smollm2.log 2>&1 &

Stages: seed 0, then seeds 0-1, then 0-2 of ce / γ-CE 0.5 / GCE 0.7 at 0 and 40 % symmetric noise; then the issue's
nine losses at 0 and 40 %, then also at 20 %; then 0 and 40 % asymmetric noise (its own report folder).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prefix_cache  # noqa: E402

from hf_tvd_loss.study.command import main  # noqa: E402

CONFIG = "configs/compare/classification_smollm2_bible.yaml"
STAGE1 = ["ce", "gamma0.5", "gce0.7"]
ALL = ["ce", "ls0.1", "focal2", "gce0.7", "gamma0.1", "gamma0.5", "gamma0.8", "gamma0.5b0.2", "dft"]
stages = [
    ["--losses", *STAGE1, "--seeds", "0", "--noise_rates", "0", "0.4"],
    ["--losses", *STAGE1, "--seeds", "0", "1", "--noise_rates", "0", "0.4"],
    ["--losses", *STAGE1, "--seeds", "0", "1", "2", "--noise_rates", "0", "0.4"],
    ["--losses", *ALL, "--seeds", "0", "1", "2", "--noise_rates", "0", "0.4"],
    ["--losses", *ALL, "--seeds", "0", "1", "2", "--noise_rates", "0", "0.2", "0.4"],
    [
        "--losses",
        *ALL,
        "--seeds",
        "0",
        "1",
        "2",
        "--noise_rates",
        "0",
        "0.4",
        "--noise_kind",
        "asymmetric",
        "--report_dir",
        "reports/compare_classification_smollm2_bible_asym",
    ],
]
print(f"cache: {prefix_cache.load()} examples loaded from {prefix_cache.PATH}", flush=True)  # none: filled by run 1
for i, stage in enumerate(stages, 1):
    print(f"=== stage {i} {time.strftime('%H:%M:%S')}: {' '.join(stage)}", flush=True)
    try:
        main(["--study_config", CONFIG, *stage], prog="python -m hf_tvd_loss compare")
    except SystemExit as err:
        print(f"stage {i} exited {err.code}", flush=True)
        sys.exit(1)
    print(f"=== stage {i} done {time.strftime('%H:%M:%S')}", flush=True)
