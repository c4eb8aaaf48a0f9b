"""The hostile-input table (``tests/hostile_cases.py``): every bad input is refused well, before any work.

For the scripts' cases "refused well" means: ``prepare`` raises one ``ValueError`` (or argparse exits with status
2) whose single-line message names the problem (the option, the file and line, the checkpoint, ...), and the output
folder is not created, or, when it existed, is left exactly as it was. The Python API cases call
``gamma_cross_entropy``, ``TVDArguments`` and ``TVDTrainer`` directly. ``python tests/hostile_cases.py`` runs the same
table and, for anything ``prepare`` accepts, trains to tell a late refusal from a silent acceptance.
"""

from __future__ import annotations

import pytest
from hostile_cases import CASES, REFUSED_WELL, judge


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}-{c.id}" for c in CASES])
def test_bad_input_is_refused_well(case, tmp_path):
    result = judge(case, tmp_path, train=False)
    assert result.verdict == REFUSED_WELL, f"{result.verdict} at {result.stage}: {result.message}"


def test_the_table_is_as_wide_as_the_issue():
    groups = {c.group for c in CASES}
    assert groups == {"cli", "yaml", "data", "output", "api"}
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)
