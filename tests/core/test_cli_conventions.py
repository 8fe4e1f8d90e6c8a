"""CLI conventions: --version, help and defaults on every flag, one JSON key style, YAML
without anchors, table|json|yaml where a command prints data."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polypythia import __version__
from polypythia.cli import COMMANDS

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests/examples"
DATA_COMMANDS = ("presets", "plan", "spikes", "outliers")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polypythia.cli", *args], capture_output=True, text=True
    )


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"polypythia {command}")
    importlib.import_module(COMMANDS[command][0]).configure(parser)
    return parser


def test_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"polypythia {__version__}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_help_and_states_its_default(command: str) -> None:
    for action in _parser(command)._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        flag = action.option_strings[-1]
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {flag}: no help"
        has_default = action.default not in (None, False, argparse.SUPPRESS) and not (
            isinstance(action, argparse._StoreTrueAction)
        )
        if has_default:
            assert "%(default)s" in action.help or str(action.default) in action.help, (
                f"{command} {flag}: default {action.default!r} not stated in its help"
            )


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_data_commands_offer_table_json_and_yaml(command: str) -> None:
    (output,) = [a for a in _parser(command)._actions if "--output" in a.option_strings]
    assert list(output.choices) == ["table", "json", "yaml"] and output.default == "table"


def _keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_json_keys_are_camel_case_across_commands(tmp_path) -> None:
    telemetry = tmp_path / "run.jsonl"
    rows = [{"step": s, "loss": 3.0 + (4.0 if s == 300 else 0.0)} for s in range(1, 400)]
    telemetry.write_text("\n".join(json.dumps(r) for r in rows))
    outputs = {
        "presets": _cli("presets", "-o", "json"),
        "plan": _cli("plan", str(EXAMPLES / "sweep-tiny.yaml"), "-o", "json"),
        "spikes": _cli("spikes", str(telemetry), "-o", "json", "--signals", "loss"),
    }
    for command, result in outputs.items():
        assert result.returncode == 0, result.stderr
        keys = _keys(json.loads(result.stdout))
        assert keys and not [k for k in keys if "_" in k], (command, sorted(keys))


def test_yaml_output_has_no_anchors_and_round_trips() -> None:
    result = _cli("plan", str(EXAMPLES / "sweep-polypythias.yaml"), "-o", "yaml")
    assert result.returncode == 0, result.stderr
    assert "&id" not in result.stdout and "*id" not in result.stdout
    assert len(list(yaml.safe_load_all(result.stdout))) == 50
    presets = yaml.safe_load(_cli("presets", "-o", "yaml").stdout)
    assert presets[0]["name"] == "nano"


def test_plan_of_a_sweep_without_a_bucket_names_the_local_store() -> None:
    result = _cli("plan", str(EXAMPLES / "sweep-tiny.yaml"), "-o", "json")
    run = json.loads(result.stdout)["runs"][0]
    assert not run["config"]["runUri"].startswith("s3:///")
    assert run["config"]["runUri"].endswith("/store/tiny/tiny-nano-s0")


def test_operator_refuses_an_unknown_log_format_in_one_line() -> None:
    env = {**os.environ, "POLYPYTHIA_LOG_FORMAT": "xml"}
    result = subprocess.run(
        [sys.executable, "-m", "polypythia.cli", "operator", "--namespace", "x"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "polypythia operator: error: POLYPYTHIA_LOG_FORMAT: 'xml' is not one of full, plain, json"
    ]
