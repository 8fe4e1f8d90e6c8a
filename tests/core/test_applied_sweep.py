"""The sweep as applied is recorded beside its runs (``sweep.json``), so that what is made
later from storage alone (`polypythia report`) judges with the sweep's own settings; the
operator's side is tested in tests/monitoring/test_outliers_one_rule.py."""

from __future__ import annotations

from pathlib import Path

from polypythia import cli
from polypythia.local.driver import DriverOptions, LocalDriver
from polypythia.spec import sweep_from_object
from polypythia.storage import SweepStore
from support import fixture_sweep as fx
from support.sweeps import sweep_object


def test_the_local_driver_records_the_sweep_as_applied_and_it_reads_back_as_that_sweep(
    tmp_path: Path,
) -> None:
    sweep = sweep_from_object(
        sweep_object(
            "rec",
            {
                "sizes": ["nano"],
                "seeds": {"list": [0, 1, 2]},
                "training": {"steps": 40, "precision": "fp32"},
                "instability": {"outliers": {"falseAlarmRate": 0.02, "consecutive": 3}},
            },
        )
    )
    driver = LocalDriver(sweep, str(tmp_path / "store"), DriverOptions(workdir=tmp_path / "w"))
    driver.record_applied()
    applied = SweepStore.open(str(tmp_path / "store" / "rec")).read_applied()
    assert applied["metadata"]["name"] == "rec"
    # The record is a valid sweep, defaults included: loading it again changes nothing.
    again = sweep_from_object(applied)
    assert again.spec == sweep.spec
    assert applied["spec"]["instability"]["outliers"]["falseAlarmRate"] == 0.02
    assert "window" in applied["spec"]["instability"]  # a CRD default, filled in


def test_a_damaged_sweep_json_stops_the_report_with_one_line(tmp_path: Path, capsys) -> None:
    sweep = fx.write_sweep(tmp_path / "store")
    (sweep / "sweep.json").write_text('{"spec": ')
    assert cli.main(["report", str(sweep), "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "sweep.json: not valid JSON" in err
    assert not (tmp_path / "report" / "index.html").exists()
