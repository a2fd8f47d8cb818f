"""The README's causes table agrees with the table of causes (tinyimagenet/diagnosis/causes.py),
id by id: same causes, same order, same kind and measurement. Adding a cause is one entry in
causes.py plus its README row (`python -c "from tinyimagenet.diagnosis.causes import
markdown_table; print(markdown_table())"` prints the rows)."""
from __future__ import annotations

import re
from pathlib import Path

from tinyimagenet.diagnosis import causes
from tinyimagenet.diagnosis.verdict import rank_causes  # noqa: F401 (the table imports cleanly with its reader)

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `(\w+)` \| (\w+) \| (.*?) \| (.*?) \| (.*?) \|$")


def readme_rows() -> list:
    text = README.read_text()
    start = text.index("**Every cause, and what establishes it**")
    return [ROW.match(line).groups() for line in text[start:].splitlines() if ROW.match(line)]


def test_readme_causes_table_matches_causes_py_id_by_id():
    rows = readme_rows()
    assert [r[0] for r in rows] == list(causes.ids()), "README causes table: ids or order differ from causes.py"
    for cid, kind, measured, experiment, roots in rows:
        spec = causes.by_id(cid)
        assert kind == spec.kind, cid
        assert measured == spec.measured_by, cid
        assert experiment == spec.experiment, cid


def test_every_cause_is_complete():
    for c in causes.CAUSES:
        assert c.suggestion and c.measured_by and callable(c.judge), c.id
        assert c.kind in causes.KINDS, c.id
        if not c.is_root:
            assert c.fits is None, f"{c.id}: a symptom has no fit of its own; its roots' fits test it"
    assert [c.id for c in causes.roots()] + [c.id for c in causes.symptoms()] == list(causes.ids()), \
        "roots come before symptoms in the table (symptoms in causal order)"


def test_the_watcher_ranks_every_loop_and_loss_cause():
    """Loop and loss faults are table entries the watcher reports: each needs a place in its own order."""
    from tinyimagenet.watch.rules import ORDER, suggestion
    mine = [c.id for c in causes.CAUSES if c.kind in ("loop", "loss")]
    assert len(mine) == 9 and set(mine) <= set(ORDER), set(mine) - set(ORDER)
    assert all(suggestion(cid) == causes.by_id(cid).suggestion.format(lr="") for cid in ORDER)
