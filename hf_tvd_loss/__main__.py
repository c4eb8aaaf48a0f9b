"""``python -m hf_tvd_loss <subcommand> ...``: the ``hf-tvd-loss`` command (:mod:`hf_tvd_loss.command`).

Also ``accelerate launch -m hf_tvd_loss summarization ...``, from any folder.
"""

from __future__ import annotations

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m hf_tvd_loss"))
