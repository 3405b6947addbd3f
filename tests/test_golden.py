"""The run id of every run of every packaged study under every profile, as the runner plans it on
a machine without a GPU, against ``tests/golden/run_ids.json``. A run id names a run's folder: a
change that moves it makes every finished run train again, so it changes only on purpose, in a
commit of its own that regenerates the file (``RESATTN_WRITE_GOLDEN=1 pytest tests/test_golden.py``)
and says why.

The official CIFAR files are not here: the runs are planned as for ``--download`` (the data the
runner would fetch), which needs no network to plan."""

import json
import os
from pathlib import Path

import pytest

from resattn.study import preflight
from resattn.study.spec import available_studies, expand, load_profile, load_study, profile_names

GOLDEN = Path(__file__).parent / "golden" / "run_ids.json"
CPU = {"trainer.precision": "32-true"}  # default_precision without a GPU


def planned_run_ids() -> dict[str, dict[str, list[str]]]:
    ids = {}
    for study in available_studies():
        for profile in profile_names():
            runs = expand(load_study(study), load_profile(profile), None, {}, defaults=CPU)
            ids.setdefault(study, {})[profile] = [r.run_id for r in preflight.resolve(runs)[0]]
    return ids


@pytest.mark.slow
def test_every_packaged_run_id_is_the_golden_one():
    ids = planned_run_ids()
    if os.environ.get("RESATTN_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps(ids, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    changed = {
        f"{s}/{p}": sorted(set(golden.get(s, {}).get(p, [])) ^ set(ids[s][p]))[:4]
        for s in ids
        for p in ids[s]
        if golden.get(s, {}).get(p) != ids[s][p]
    }
    assert not changed and set(golden) == set(ids), changed
