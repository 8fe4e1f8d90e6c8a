"""What integrity costs: `polypythia verify` throughput (sha256 and sizes-only) and the
latency of one conditional lease renewal, on a local directory and on a moto S3 server.

Prints one JSON line. The checkpoint is 64 MiB of random bytes in four files (a real
one is larger, the rate is what carries over). Run on an otherwise idle machine.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from polypythia.storage import RunLease, RunStore
from polypythia.storage.verify import sound_checkpoints
from support.moto_s3 import start_s3_server

MIB = 1 << 20
FILES = 4
FILE_MIB = 16
RENEWALS = 50


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(FILES):
        (folder / f"part{i}.bin").write_bytes(os.urandom(FILE_MIB * MIB))
    return folder


def _measure(run: RunStore, src: Path) -> dict:
    run.commit_checkpoint(1, src)
    out = {}
    for name, checksums in (("verifySha256MiBps", True), ("verifySizesMs", False)):
        started = time.perf_counter()
        result = sound_checkpoints(run, checksums=checksums)
        took = time.perf_counter() - started
        assert result.sound == [1], result.damaged
        out[name] = round(FILES * FILE_MIB / took, 1) if checksums else round(took * 1000, 1)
    lease = RunLease(run, owner="bench")
    lease.acquire(wait=False)
    times = []
    for _ in range(RENEWALS):
        started = time.perf_counter()
        lease.renew()
        times.append(time.perf_counter() - started)
    lease.release()
    out["leaseRenewMedianMs"] = round(statistics.median(times) * 1000, 2)
    return out


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        src = _checkpoint(Path(tmp) / "src")
        local = _measure(RunStore.open(str(Path(tmp) / "store" / "s" / "r")), src)
        server = start_s3_server()
        try:
            os.environ.update(server.env)
            bucket = server.make_bucket()
            s3 = _measure(RunStore.open(f"s3://{bucket}/s/r"), src)
        finally:
            server.stop()
    print(
        json.dumps(
            {
                "bench": "integrity",
                "checkpointMiB": FILES * FILE_MIB,
                "local": local,
                "s3Moto": s3,
                "cpus": os.cpu_count(),
                "load1": round(os.getloadavg()[0], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
