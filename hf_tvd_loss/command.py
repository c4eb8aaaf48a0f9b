"""The ``hf-tvd-loss`` command: the task scripts and the loss study, installed with the package.

::

    hf-tvd-loss summarization [options]        # what scripts/finetune_summarization.py [options] runs
    hf-tvd-loss translation [options]
    hf-tvd-loss language-modeling [options]
    hf-tvd-loss compare [options] [-- task options]
    python -m hf_tvd_loss <subcommand> ...     # the same, so that this works from any folder:
    accelerate launch -m hf_tvd_loss summarization --config my.yaml

Every registered task (:data:`hf_tvd_loss.tasks.TASKS`, its name with ``-`` for ``_``) is a subcommand, with the
task's own parser: the options, ``--config FILE.yaml`` and ``--help`` of its script. ``compare`` is the loss study
(:mod:`hf_tvd_loss.study.command`). Registering a task in ``TASKS`` is all it takes to add a subcommand.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterator, Sequence

__all__ = ["PROG", "STUDY", "main", "subcommands"]

PROG = "hf-tvd-loss"
STUDY = "compare"  # the loss study's subcommand; every other subcommand is a task


def subcommands() -> dict[str, str | None]:
    """Subcommand → registered task name (``None`` for the loss study), in the registry's order."""
    from .tasks import TASKS

    table: dict[str, str | None] = {name.replace("_", "-"): name for name in TASKS}
    table[STUDY] = None
    return table


def _summaries(table: dict[str, str | None]) -> dict[str, str]:
    """One line per subcommand: the task's description, the study's title."""
    from .tasks import get_task

    lines = {}
    for sub, task in table.items():
        if task is None:
            lines[sub] = "Compare γ-CE with cross-entropy, label smoothing, focal loss and DFT on one task (a study)."
        else:
            lines[sub] = get_task(task).description or f"The {task} task."
    return lines


def _overview(prog: str, table: dict[str, str | None]) -> str:
    summaries = _summaries(table)
    width = max(len(sub) for sub in table)
    rows = "\n".join(f"  {sub:<{width}}  {summaries[sub]}" for sub in table)
    return (
        f"usage: {prog} <subcommand> [options]\n\n"
        "Train, fine-tune and evaluate with the γ-CE (TaiLr) loss, or compare it with other losses.\n\n"
        f"subcommands:\n{rows}\n\n"
        f"{prog} <subcommand> --help lists the subcommand's options; --config FILE.yaml sets\n"
        "defaults that the command line overrides. Several processes or GPUs:\n"
        "  accelerate launch -m hf_tvd_loss <subcommand> [options]"
    )


def _refuse(prog: str, message: str) -> SystemExit:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def _unknown(prog: str, given: str, table: dict[str, str | None]) -> SystemExit:
    known = list(table)
    close = difflib.get_close_matches(given.replace("_", "-"), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return _refuse(prog, f"unknown subcommand {given!r}{hint}; the subcommands are: {', '.join(known)}")


@contextlib.contextmanager
def _program_name(name: str) -> Iterator[None]:
    """``sys.argv[0]`` set to ``name`` for the run: the task's parser takes its usage line from it, and the run's
    model card its command line."""
    saved = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = name
    else:
        sys.argv.append(name)
    try:
        yield
    finally:
        if saved is None:
            sys.argv.pop(0)
        else:
            sys.argv[0] = saved


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the subcommand that ``argv`` (default: the command line) names with the options after it.

    Returns 0 when the run finished; bad input exits with status 2 and one ``error:`` line, as the scripts do.
    ``prog`` is the command as typed (``python -m hf_tvd_loss`` there), for the usage lines.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    table = subcommands()
    if not argv:
        print(_overview(prog, table), file=sys.stderr)
        raise _refuse(prog, "a subcommand is required")
    given, rest = argv[0], argv[1:]
    if given in ("-h", "--help"):
        print(_overview(prog, table))
        return 0
    if given == "--version":
        from . import __version__

        print(f"{prog} (hf_tvd_loss) {__version__}")
        return 0
    if given.startswith("-"):
        raise _refuse(prog, f"the subcommand comes first: {prog} <subcommand> {given} ...; see {prog} --help")
    sub = given.replace("_", "-")
    if sub not in table:
        raise _unknown(prog, given, table)
    task = table[sub]
    if task is None:
        from .study.command import main as study_main

        study_main(rest, prog=f"{prog} {sub}")
        return 0
    from .tasks import get_task, run_task

    with _program_name(f"{prog} {sub}"):
        run_task(get_task(task), rest)
    return 0
