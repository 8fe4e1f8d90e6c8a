"""Bad input meets a one-line message naming the file, flag or field (exit 2 for usage,
1 for runtime faults), early and never as a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from polypythia.cli import main
from polypythia.local import cli as run_cli
from polypythia.spec import load_sweep_file
from polypythia.storage import StorageFull
from polypythia.storage.local import LocalStore
from support.sweeps import sweep_object

SWEEP = sweep_object(
    "bad",
    {
        "sizes": ["nano"],
        "seeds": {"list": [0]},
        "training": {"steps": 10, "globalBatchSize": 8, "sequenceLength": 32},
    },
)


def sweep_file(tmp_path: Path, text: str | None = None, **spec) -> Path:
    body = json.loads(json.dumps(SWEEP))
    for key, value in spec.items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value}
    path = tmp_path / "sweep.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(body))
    return path


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str], code: int) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unbounded_schedule_is_refused_fast(tmp_path: Path, capsys) -> None:
    path = sweep_file(
        tmp_path, training={"steps": 10**30}, checkpoints={"schedule": "every", "every": 1000}
    )
    start = time.monotonic()
    err = one_line_error(capsys, ["validate", str(path)], 2)
    assert time.monotonic() - start < 10
    assert "spec.training.steps" in err and "limit" in err
    path = sweep_file(
        tmp_path, training={"steps": 10**7}, checkpoints={"schedule": "every", "every": 1}
    )
    assert "spec.checkpoints" in one_line_error(capsys, ["validate", str(path)], 2)


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"training": {"learningRate": float("inf")}}, "spec.training.learningRate"),
        ({"training": {"learningRate": float("nan")}}, "spec.training.learningRate"),
        ({"instability": {"threshold": float("nan")}}, "spec.instability.threshold"),
        ({"instability": {"outliers": {"threshold": float("inf")}}}, "outliers.threshold"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path: Path, capsys, block: dict, field: str) -> None:
    err = one_line_error(capsys, ["validate", str(sweep_file(tmp_path, **block))], 2)
    assert field in err and "finite" in err


def test_duplicate_keys_and_deep_yaml_are_refused(tmp_path: Path, capsys) -> None:
    text = yaml.safe_dump(SWEEP).replace("spec:\n", "spec:\n  maxRetries: 1\n  maxRetries: 2\n")
    err = one_line_error(capsys, ["validate", str(sweep_file(tmp_path, text))], 2)
    assert "duplicate key 'maxRetries'" in err
    deep = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    err = one_line_error(capsys, ["validate", str(sweep_file(tmp_path, deep))], 2)
    assert "nested deeper" in err


@pytest.mark.parametrize("port", ["99999", "-2", "http"])
def test_bad_metrics_port(tmp_path: Path, capsys, port: str) -> None:
    argv = ["run", str(sweep_file(tmp_path)), "--workdir", str(tmp_path / "w")]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--metrics-port", port])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--metrics-port" in err and "Traceback" not in err


def test_workdir_that_is_a_file(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    argv = ["run", str(sweep_file(tmp_path)), "--workdir", str(afile), "--no-ray"]
    assert "is a file" in one_line_error(capsys, argv, 2)


def test_binary_train_config(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "run.json"
    binary.write_bytes(bytes(range(256)) * 4)
    err = one_line_error(capsys, ["train", "--no-ray", "--config", str(binary)], 2)
    assert "--config" in err and "UTF-8" in err


def test_busy_default_metrics_port_falls_back(monkeypatch, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setattr(run_cli, "DEFAULT_METRICS_PORT", busy.getsockname()[1])
        exporter = run_cli._exporter(load_sweep_file_for_metrics(), None)
        try:
            out = capsys.readouterr().out
            assert f"port {busy.getsockname()[1]} is busy" in out and str(exporter.port) in out
        finally:
            exporter.close()
        with pytest.raises(Exception, match="already in use"):
            run_cli._exporter(load_sweep_file_for_metrics(), busy.getsockname()[1])


def load_sweep_file_for_metrics():
    from polypythia.spec import sweep_from_object

    return sweep_from_object(SWEEP)


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 1 MiB tmpfs (needs root, as on the project's machines)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_says_disk_full_with_the_path(full_disk: Path) -> None:
    store = LocalStore(full_disk)
    with pytest.raises(StorageFull, match="disk full") as full:
        store.put_bytes("run/checkpoints/step1/model.safetensors", b"x" * (2 << 20))
    assert str(full_disk / "run") in str(full.value)
    assert not [p for p in full_disk.rglob("*") if p.is_file()]  # no half-written file


def test_full_disk_during_a_torch_checkpoint(full_disk: Path) -> None:
    import torch

    from polypythia_trainer.checkpoint import write_checkpoint

    model = torch.nn.Linear(512, 512)
    model.save_pretrained = lambda out, safe_serialization: torch.save(  # type: ignore[attr-defined]
        model.state_dict(), out / "model.pt"
    )
    with pytest.raises(StorageFull, match="disk full"):
        write_checkpoint(
            full_disk / "step1",
            model=model,
            save_tokenizer=lambda out: None,
            state={},
            optimizer_states=[{"w": torch.zeros(1 << 18)}],
            sharded=False,
            config={},
        )


def test_load_sweep_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="sweep.yaml"):
        load_sweep_file(sweep_file(tmp_path, "a: [1\n"))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"evaluation": {"tasks": ["pp_no_such_task"]}}, "spec.evaluation.tasks"),
        (
            {"data": {"format": "megatron", "path": "/nonexistent/ds", "tokenizer": "/no/tok"}},
            "spec.data.path: /nonexistent/ds.bin",
        ),
    ],
)
def test_run_checks_inputs_before_training(tmp_path: Path, capsys, spec: dict, field: str) -> None:
    argv = ["run", str(sweep_file(tmp_path, **spec)), "--workdir", str(tmp_path / "w")]
    err = one_line_error(capsys, [*argv, "--no-ray", "--metrics-port", "-1"], 2)
    assert field in err
    assert not (tmp_path / "w" / "store").exists()  # nothing trained, nothing written


def test_empty_inputs_are_refused(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "ds"
    argv = ["data", "build", str(empty), "--out", str(out), "--train-tokenizer", "300"]
    err = one_line_error(capsys, argv, 2)
    assert "0 tokens" in err and not (tmp_path / "ds.bin").exists()
    argv = ["data", "build", str(empty), "--out", str(tmp_path / "missing" / "ds")]
    assert "does not exist" in one_line_error(capsys, [*argv, "--train-tokenizer", "300"], 2)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert "no complete checkpoint" in one_line_error(capsys, ["evaluate", str(nothing)], 1)
    assert "no runs" in one_line_error(capsys, ["report", str(nothing)], 2)


def test_unwritable_report_out_is_one_line(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    store = tmp_path / "sweep" / "run-a"
    store.mkdir(parents=True)
    (store / "run.json").write_text("{}")
    argv = ["report", str(tmp_path / "sweep"), "--out", str(afile / "out")]
    err = one_line_error(capsys, argv, 1)
    assert str(afile / "out") in err and "Not a directory" in err


def test_run_refuses_a_missing_bucket_before_training(tmp_path: Path, capsys, s3_endpoint) -> None:
    argv = ["run", str(sweep_file(tmp_path)), "--workdir", str(tmp_path / "w"), "--no-ray"]
    argv += ["--metrics-port", "-1", "--storage", "s3://no-such-bucket-here/x"]
    err = one_line_error(capsys, argv, 2)
    assert "no-such-bucket-here" in err and "does not exist" in err
