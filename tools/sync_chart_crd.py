"""Copy the CRD from crds/ into the chart and into the Python package.

Helm cannot read files outside the chart and the chart may be packaged on its own; a
wheel installed anywhere must validate a sweep with the CRD it was built with. Both keep a
byte-identical copy of crds/ (the one source) instead of a symlink; `--check` (and a test)
fails when a copy differs.

Usage: python tools/sync_chart_crd.py [--check]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "crds"
TARGETS = (REPO / "charts" / "polypythia" / "crds", REPO / "operator" / "polypythia" / "crds")


def differences(target: Path) -> list[str]:
    """Names of CRD files missing, extra or different in one copy."""
    wanted = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    present = {p.name: p.read_bytes() for p in target.glob("*.yaml")}
    names = sorted(set(wanted) | set(present))
    return [name for name in names if wanted.get(name) != present.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    stale = [(target, name) for target in TARGETS for name in differences(target)]
    for target, name in stale:
        where = (target / name).relative_to(REPO)
        if args.check:
            print(f"{where} differs from crds/{name}", file=sys.stderr)
            continue
        target.mkdir(parents=True, exist_ok=True)
        source = SOURCE / name
        if source.exists():
            shutil.copyfile(source, target / name)
        else:
            (target / name).unlink()
        print(f"updated {where}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
