"""Compare γ-CE with cross-entropy, label smoothing, focal loss and DFT on one task: quality, calibration, noise.

A thin front end of the loss study in the package (:mod:`hf_tvd_loss.study.command`); the installed command is
``hf-tvd-loss compare``, with the same options. Default study (synthetic de→en translation, tiny transformer from
scratch, 42 runs in 2 worker processes, about 9 minutes on 2 CPU cores)::

    python scripts/compare_losses.py

Other tasks and settings; options after ``--`` go to the task script (see its ``--help``)::

    python scripts/compare_losses.py --task language_modeling --losses ce gamma1e-7b0.2 dft --seeds 0 1 2
    python scripts/compare_losses.py --study_config configs/compare/translation_bible.yaml   # real data, a GPU

Loss names, the report and every option: ``--help`` and ``docs/LOSS_COMPARISON.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_tvd_loss.study.command import load_study_config
from hf_tvd_loss.study.command import main as run_study_command

__all__ = ["PROG", "load_study_config", "main"]

PROG = "python scripts/compare_losses.py"


def main(argv: Sequence[str] | None = None) -> str:
    """Run the study (default: the command line's options) and write its report; returns the report's path."""
    return run_study_command(argv, prog=PROG)


if __name__ == "__main__":
    main()
