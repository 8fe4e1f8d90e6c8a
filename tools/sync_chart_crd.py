"""Copy the CRD from crds/ into the chart, which Helm installs from its own crds/ folder.

Helm cannot read files outside the chart and the chart may be packaged on its own, so the
chart keeps a byte-identical copy instead of a symlink; `--check` (and a test) fails when
the two differ.

Usage: python tools/sync_chart_crd.py [--check]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "crds"
TARGET = REPO / "charts" / "polypythia" / "crds"


def differences() -> list[str]:
    """Names of CRD files missing, extra or different in the chart copy."""
    wanted = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    present = {p.name: p.read_bytes() for p in TARGET.glob("*.yaml")}
    names = sorted(set(wanted) | set(present))
    return [name for name in names if wanted.get(name) != present.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    stale = differences()
    if args.check:
        for name in stale:
            print(f"charts/polypythia/crds/{name} differs from crds/{name}", file=sys.stderr)
        return 1 if stale else 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in stale:
        source = SOURCE / name
        if source.exists():
            shutil.copyfile(source, TARGET / name)
        else:
            (TARGET / name).unlink()
        print(f"updated charts/polypythia/crds/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
