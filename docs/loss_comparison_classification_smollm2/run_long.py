"""The long-training classification study (configs/compare/classification_smollm2_bible_long.yaml) stage by stage in
one process, most informative runs first; each stage writes its report and later stages (and a restart) reuse every
finished run. The frozen blocks' outputs are loaded from the file prefix_cache.py writes (filled by the first run if
the file is missing). From the repository root:

    nohup nice -n 10 python docs/loss_comparison_classification_smollm2/run_long.py > reports/cls_smollm2_long.log 2>&1 &

A stage number as the argument starts there (earlier stages' runs are reused anyway; this skips their reports and the
tuning's re-check).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prefix_cache  # noqa: E402
import tune  # noqa: E402

from hf_tvd_loss.study.command import main  # noqa: E402

CONFIG = "configs/compare/classification_smollm2_bible_long.yaml"
CORE = ["ce", "gamma0.5", "gce0.7"]
MORE = [*CORE, "ls0.1", "focal2", "gamma0.5b0.2"]
NOISY = ["--clean_seeds", "--noise_rates", "0.4"]  # the noisy runs only, seed by seed: noise is what it is about
SHORT = ["--study_config", "configs/compare/classification_smollm2_bible.yaml"]  # 6a's budget (6 epochs at 3e-4)
stages = [
    ["--losses", "ce", "--seeds", "0", "--noise_rates", "0.4"],  # does cross-entropy fit the noisy labels?
    ["--losses", *CORE, "--seeds", "0", *NOISY],
    ["--losses", *CORE, "--seeds", "0", "1", *NOISY],
    ["--losses", *CORE, "--seeds", "0", "1", "2", *NOISY],
    "tune",  # tune.py: tuned γ-CE against tuned cross-entropy (6 epochs, 40 % noise), in this process (one cache)
    ["--losses", *CORE, "--seeds", "0", "1", "2", "--clean_seeds", "0", "--noise_rates", "0.4"],
    ["--losses", *MORE, "--seeds", "0", "1", "2", *NOISY],  # the rest of the loss grid at 40 % noise
    # the short budget's noise curve: 0, 20 and 40 %, 3 seeds (its report folder, reports/compare_..._bible)
    [*SHORT, "--losses", *CORE, "--seeds", "0", "1", "2", "--noise_rates", "0.2", "0.4"],
    ["--losses", *MORE, "--seeds", "0", "1", "2", "--clean_seeds", "0", "--noise_rates", "0.4"],
    ["--losses", *CORE, "--seeds", "0", "1", "2", "--noise_rates", "0.4"],
]
first = int(sys.argv[1]) if len(sys.argv) > 1 else 1
print(f"cache: {prefix_cache.load()} examples loaded", flush=True)
for i, stage in enumerate(stages, 1):
    if i < first:
        continue
    shown = stage if isinstance(stage, str) else " ".join(stage)
    print(f"=== stage {i} {time.strftime('%H:%M:%S')}: {shown}", flush=True)
    try:
        if stage == "tune":
            tune.main()
        else:
            config = [] if stage[0] == "--study_config" else ["--study_config", CONFIG]
            main([*config, *stage], prog="python -m hf_tvd_loss compare")
    except SystemExit as err:
        print(f"stage {i} exited {err.code}", flush=True)
        sys.exit(1)
    if not os.path.exists(prefix_cache.PATH):
        print(f"cache: {prefix_cache.save()} examples saved", flush=True)
    print(f"=== stage {i} done {time.strftime('%H:%M:%S')}", flush=True)
