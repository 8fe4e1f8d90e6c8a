"""`polypythia presets`: the table and its exact published parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys

from polypythia import crd, presets


def test_cli_json_lists_every_size_with_exact_parameter_counts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polypythia.cli", "presets", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(presets.PRESETS)
    for row in rows.values():
        if row["publishedParameters"] is not None:
            assert row["parameters"] == row["publishedParameters"], row["name"]
    assert rows["70m"]["parameters"] == 70_426_624


def test_crd_size_enum_is_the_preset_table() -> None:
    sizes = crd.schema()["properties"]["spec"]["properties"]["sizes"]["items"]["enum"]
    assert sizes == list(presets.PRESETS)
