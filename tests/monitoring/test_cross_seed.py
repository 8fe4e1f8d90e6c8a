"""Loss and evaluation scores feed one cross-seed outlier rule."""

from __future__ import annotations

from polypythia.monitoring.cross_seed import RunHistory, cross_seed_outliers
from polypythia.monitoring.outliers import OutlierSettings


def _eval(acc: float, ppl: float) -> dict:
    return {
        "results": {
            "pp_blimp": {"acc,none": acc, "acc_stderr,none": 0.01},
            "pp_cloze": {"perplexity,none": ppl},
        }
    }


def _histories(bad_acc_seed: int | None = None, bad_ppl_seed: int | None = None):
    out = []
    for seed in range(6):
        evals = {}
        for i, step in enumerate((100, 200, 300)):
            acc = 0.6 + 0.01 * seed + 0.05 * i
            ppl = 50.0 - 0.3 * seed - 5 * i
            if seed == bad_acc_seed and step >= 200:
                acc = 0.2
            if seed == bad_ppl_seed and step >= 200:
                ppl = 400.0
            evals[step] = _eval(acc, ppl)
        losses = {100: 5.0 + 0.01 * seed, 200: 4.0 + 0.01 * seed, 300: 3.5 + 0.01 * seed}
        out.append(RunHistory("70m", f"r-s{seed}", losses, evals))
    return out


def test_low_accuracy_flags_the_run_on_that_task():
    result = cross_seed_outliers(_histories(bad_acc_seed=2))
    assert set(result.verdicts) == {"r-s2"}
    verdict = result.first("r-s2")
    assert verdict.signal == "eval:pp_blimp/acc" and verdict.first_step == 200
    assert verdict.score > verdict.threshold
    assert result.latest_z["r-s2"]["eval:pp_blimp/acc"] < -3.5


def test_high_perplexity_is_the_bad_side_for_perplexity():
    result = cross_seed_outliers(_histories(bad_ppl_seed=4))
    assert [v.signal for v in result.verdicts["r-s4"]] == ["eval:pp_cloze/perplexity"]


def test_better_than_the_others_is_not_an_outlier():
    histories = _histories()
    for step in (200, 300):
        histories[1].evals[step]["results"]["pp_blimp"]["acc,none"] = 0.99
    assert cross_seed_outliers(histories).verdicts == {}


def test_eval_signal_can_be_switched_off():
    settings = OutlierSettings(signals=("loss",))
    assert cross_seed_outliers(_histories(bad_acc_seed=2), settings).verdicts == {}


def test_groups_are_compared_separately():
    histories = _histories() + [
        RunHistory("160m", f"b-s{s}", {100: 9.0 + 0.01 * s, 200: 9.0 + 0.01 * s}) for s in range(4)
    ]
    assert cross_seed_outliers(histories).verdicts == {}


def test_by_family_gives_one_bounded_signal_per_kind():
    result = cross_seed_outliers(_histories(bad_acc_seed=2))
    families = result.by_family("r-s2")
    assert set(families) == {"loss", "eval"}
    z, flagged = families["eval"]
    assert flagged and z < -3.5
    assert families["loss"][1] is False
    assert result.by_family("r-s0")["eval"][1] is False
