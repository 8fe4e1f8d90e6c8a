"""Branches of one parent are compared as a family (issue #19, provenance).

User story: a researcher branches seed 3 at step 80,000 five times and seed 4 too; the
cross-seed tests ask whether one continuation of a parent departs from its siblings, not
whether seed 4's branches differ from seed 3's.
"""

from __future__ import annotations

import yaml

from polypythia import planner
from polypythia.monitoring.cross_seed import RunHistory, cross_seed_outliers, seed_group
from polypythia.spec import sweep_from_object
from support.sweeps import sweep_object


def _plan(uri: str) -> list[planner.RunPlan]:
    doc = sweep_object(
        "fam",
        {
            "sizes": ["nano", "micro"],
            "seeds": {"range": {"start": 1, "count": 5}, "axis": "data"},
            "training": {"steps": 100},
            "data": {"format": "generated"},
            "branch": {"from": {"uri": uri, "step": 50}},
        },
    )
    return planner.plan_sweep(sweep_from_object(yaml.safe_load(yaml.safe_dump(doc))))


def test_each_size_branches_from_its_own_parent_and_groups_by_it() -> None:
    plans = _plan("s3://pythia/pythia-{size}-seed3")
    groups = {p.name: seed_group(p.size, p.init, p.parent) for p in plans}
    assert groups["fam-nano-s1"] == "nano/pythia from s3://pythia/pythia-nano-seed3@step50"
    assert len({groups[p.name] for p in plans if p.size == "micro"}) == 1
    assert plans[0].config["branch"] == {
        "parent": "s3://pythia/pythia-nano-seed3",
        "step": 50,
        "optimizer": "restored",
    }
    assert plans[0].config["checkpoints"]["steps"][0] > 50


def test_branches_of_different_parents_are_not_one_family() -> None:
    def family(parent: str, base: float, count: int) -> list[RunHistory]:
        group = seed_group("410m", "pythia", parent)
        return [
            RunHistory(group, f"{parent}-s{s}", {k: base + 0.01 * s for k in (100, 200, 300)})
            for s in range(1, count + 1)
        ]

    # Seed 4's branches sit far from seed 3's: that is the parent, not a departing branch.
    apart = family("seed3@step80000", 3.0, 6) + family("seed4@step80000", 9.0, 3)
    assert cross_seed_outliers(apart).verdicts == {}
    pooled = [RunHistory("410m/pythia", h.run, h.losses) for h in apart]
    assert set(cross_seed_outliers(pooled).verdicts) == {h.run for h in apart[6:]}
