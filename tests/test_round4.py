"""Round 4 of the hostile inputs (``tests/hostile_round4.py``): paths as written, refused runs that leave the output
folder exactly as it was (bytes and times of every file, the ledger and lock included), operating-system failures
reported as one line naming the operation, the path, the reason and what was kept, launcher variables without a
launcher. Every input must be judged ``good``."""

from __future__ import annotations

import pytest
from hostile_round4 import GOOD, ROUND4, verdict


@pytest.mark.parametrize("case", ROUND4, ids=[c.id for c in ROUND4])
def test_round4_input_is_handled_well(case, tmp_path):
    outcome, message = verdict(case, tmp_path)
    assert outcome == GOOD, message
