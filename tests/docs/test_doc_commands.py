"""Every command that README.md and docs/*.md show in a fenced shell block (```sh, ```bash,
```shell) runs as written and exits 0: from a scratch folder that holds the repository's
manifests and .venv, with the docs' placeholders (STORE/SWEEP/RUN) naming a small sweep
folder written through the storage contract (tests/support/fixture_sweep.py, no Ray).

Commands that need what this machine lacks are listed in NOT_RUN, one place, each with
its reason and where else it is tested; a pattern there that matches no command fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import fixture_sweep as fx

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

NOT_RUN: dict[str, str] = {
    r"^kubectl ": "needs a Kubernetes cluster (tests/cluster drives one; tests/k8s an emulator)",
    r"^helm ": "needs a Kubernetes cluster (tests/chart renders the chart)",
    r"^export KUBECONFIG=": "points at the control plane `make cluster-up` starts",
    r"^make (test-cluster|cluster-up|cluster-down)\b": "builds and starts a Kubernetes control "
    "plane (minutes; tests/cluster)",
    r"^make (images|image-|base-image|test-images)": "needs podman or docker (tests/images)",
    r"^make test\b": "lint and the suite, this test included (test-e2e, test-faults: its long "
    "parts; CI runs each)",
    r"^make demo\b": "creates .venv, then runs the demo sweep: tests/e2e/test_demo.py runs the "
    "same `polypythia run` (slow)",
    r"^\.venv/bin/polypythia run manifests/examples/sweep-tiny\.yaml": "the demo sweep, minutes "
    "with Ray: tests/e2e/test_demo.py runs this command as written (slow)",
    r"^polypythia data batch PREFIX": "a synopsis over the pre-tokenised Pile (PREFIX); "
    "tests/data/test_megatron_order.py runs the command on a small dataset",
}
PLACEHOLDERS = {
    "STORE/SWEEP/RUN": f"store/{fx.SWEEP}/{fx.run_name(fx.SPIKE_SEED)}",
    "STORE/SWEEP": f"store/{fx.SWEEP}",
}


def shown_commands() -> list[tuple[str, str]]:
    """(where, command) for each command line of each fenced shell block; continuation
    lines are joined and trailing comments dropped."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for block in FENCE.finditer(text):
            if block.group(1) not in SHELL:
                continue
            line_no = text[: block.start(2)].count("\n") + 1
            pending = ""
            for offset, raw in enumerate(block.group(2).splitlines()):
                line = pending + raw
                if line.rstrip().endswith("\\"):
                    pending = line.rstrip()[:-1] + " "
                    continue
                pending = ""
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command and not command.startswith("#"):
                    where = f"{page.relative_to(REPO)}:{line_no + offset}"
                    out.append((where, " ".join(command.split())))
    return out


COMMANDS = shown_commands()


def _not_run(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, command)), None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A scratch folder that looks like a checkout to the commands: what they write stays here."""
    root = tmp_path_factory.mktemp("docs-commands")
    for name in ("manifests", ".venv", "charts", "crds"):
        (root / name).symlink_to(REPO / name)
    fx.write_sweep(root / "store")
    return root


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_shown_command_runs(where: str, command: str, workspace: Path) -> None:
    reason = _not_run(command)
    if reason:
        pytest.skip(reason)
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    env = {
        **os.environ,
        "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PAGER": "cat",
    }
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{where}: {command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{where}: {command} printed nothing"


def test_every_exception_still_matches_a_shown_command() -> None:
    assert COMMANDS and shutil.which("bash")
    for pattern in NOT_RUN:
        assert any(re.search(pattern, c) for _, c in COMMANDS), f"NOT_RUN {pattern!r}: stale"


def test_placeholders_left_in_run_commands_are_known() -> None:
    """A new placeholder in the docs (an upper-case word standing for a path) needs a value."""
    for where, command in COMMANDS:
        if _not_run(command):
            continue
        for placeholder in PLACEHOLDERS:
            command = command.replace(placeholder, "")
        assert not re.search(r"\b[A-Z]{3,}\b(?!=)", command), f"{where}: {command}"
