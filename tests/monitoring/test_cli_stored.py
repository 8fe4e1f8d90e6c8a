"""`polypythia spikes` and `outliers` on runs in storage, as the runbook tells people to
type them: a sweep folder, a run folder, or a run's telemetry chunks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polypythia.cli import main
from support import fixture_sweep as fx
from support.fixtures import S3Endpoint, s3_endpoint  # noqa: F401


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return fx.write_sweep(tmp_path_factory.mktemp("store"))


def _spikes(capsys, *sources: str) -> list[dict]:
    assert main(["spikes", *sources, "-o", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_spikes_of_a_sweep_folder_find_the_one_seeds_spike(sweep, capsys):
    found = _spikes(capsys, str(sweep))
    assert {(s["run"], s["signal"]) for s in found} == {
        (fx.run_name(fx.SPIKE_SEED), "loss"),
        (fx.run_name(fx.SPIKE_SEED), "grad_norm"),
    }
    assert all(s["onsetStep"] == fx.SPIKE_STEP for s in found)
    assert all(s["kind"] == "seed-specific" and s["recoveryStep"] for s in found)


def test_a_run_folder_and_its_telemetry_chunks_are_one_run(sweep, capsys):
    run = sweep / fx.run_name(fx.SPIKE_SEED)
    chunks = sorted(str(p) for p in (run / "telemetry").glob("*.jsonl"))
    assert len(chunks) == fx.STEPS // fx.CHUNK
    from_folder = _spikes(capsys, str(run))
    from_chunks = _spikes(capsys, *chunks)
    assert from_folder == from_chunks
    assert {s["run"] for s in from_folder} == {run.name}
    assert main(["spikes", str(sweep / fx.run_name(0))]) == 0
    assert capsys.readouterr().out.strip() == "no spikes found"


def test_outliers_of_a_sweep_folder_flag_the_seed_that_fell_behind(sweep, capsys):
    assert main(["outliers", str(sweep), "-o", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert {v["run"] for v in found} == {fx.run_name(fx.OUTLIER_SEED)}
    assert {v["signal"] for v in found} == {"loss:validation", "eval:pp_cloze/acc"}
    assert all(v["firstStep"] == fx.OUTLIER_FROM and v["score"] > v["threshold"] for v in found)


def test_outliers_of_a_run_folder_compare_it_with_its_sweep(sweep, capsys):
    assert main(["outliers", str(sweep / fx.run_name(fx.OUTLIER_SEED))]) == 0
    table = capsys.readouterr().out
    assert "loss:validation" in table and fx.run_name(fx.OUTLIER_SEED) in table
    assert main(["outliers", str(sweep / fx.run_name(0))]) == 0
    assert capsys.readouterr().out.strip() == "no outlier runs"


def test_too_few_seeds_and_wrong_folders_are_usage_errors(sweep, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    for seed in range(3):
        (small / fx.run_name(seed)).symlink_to(sweep / fx.run_name(seed))
    assert main(["outliers", str(small)]) == 2
    err = capsys.readouterr().err
    assert "not tested: 3 run(s) of nano/pythia" in err and "at least 4 seeds" in err
    assert main(["spikes", str(tmp_path / "nothing-here")]) == 2  # neither file nor folder
    (tmp_path / "empty").mkdir()
    assert main(["outliers", str(tmp_path / "empty")]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert main(["outliers", str(sweep), "--every", "10"]) == 2
    assert "--every: applies to a file of values" in capsys.readouterr().err


def test_a_sweep_in_s3_is_read_like_a_folder(s3_endpoint: S3Endpoint, capsys) -> None:  # noqa: F811
    uri = fx.write_sweep_at(f"{s3_endpoint.uri}/team", **s3_endpoint.store_kwargs())
    connect = ["--endpoint", s3_endpoint.url, "--insecure"]
    assert main(["spikes", uri, *connect, "-o", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert {(s["run"], s["onsetStep"]) for s in found} == {
        (fx.run_name(fx.SPIKE_SEED), fx.SPIKE_STEP)
    }
    assert main(["outliers", f"{uri}/{fx.run_name(fx.OUTLIER_SEED)}", *connect, "-o", "json"]) == 0
    assert {v["run"] for v in json.loads(capsys.readouterr().out)} == {fx.run_name(fx.OUTLIER_SEED)}
