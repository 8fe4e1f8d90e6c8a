"""Storage outages: calls ride them out with backoff (a moto server stopped and started
again on the same port), and telemetry waits in memory instead of being dropped."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from polypythia.storage import RunStore, StorageUnavailable
from polypythia.storage.retry import retry_seconds, with_retries
from polypythia_trainer.telemetry import TelemetryBuffer
from support.moto_s3 import S3Server, free_port
from support.s3_proxy import ignoring_conditions


def start_moto(port: int) -> S3Server:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = S3Server(endpoint=f"127.0.0.1:{port}", process=proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{server.url}/moto-api/", timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("moto did not start")


def test_a_storage_outage_is_ridden_out(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    server = start_moto(port)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    server.make_bucket("outage")
    run = RunStore.open("s3://outage/t/run", retry_s=120)
    run.write_run_config({"run": "before"})
    server.stop()  # the outage: nothing listens on the port now
    restarted: list[S3Server] = []
    comeback = contextlib.ExitStack()

    def come_back() -> None:
        # S3 comes back with its buckets. moto forgets everything, so a fresh one gets the
        # bucket first, and only then does the old port answer again (a proxy to it): the
        # retried call must never meet a store without its bucket.
        time.sleep(2)
        again = start_moto(free_port())
        restarted.append(again)
        again.make_bucket("outage")
        comeback.enter_context(ignoring_conditions(again.endpoint, frozenset(), port=port))

    thread = threading.Thread(target=come_back)
    thread.start()
    try:
        start = time.monotonic()
        run.append_telemetry([{"step": 1, "loss": 2.0}], attempt=0)  # waits, then lands
        waited = time.monotonic() - start
        thread.join()
        assert waited >= 1.5
        assert [r["loss"] for r in run.read_telemetry()] == [2.0]
    finally:
        thread.join()
        comeback.close()
        for s in restarted:
            s.stop()


def test_retries_end_after_the_window() -> None:
    calls = []
    now = [0.0]

    def down():
        calls.append(now[0])
        raise StorageUnavailable("s3://b at host:1: endpoint unreachable")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(StorageUnavailable):
        with_retries(down, 30.0, sleep=sleep, clock=lambda: now[0])
    assert calls[-1] >= 30.0 and len(calls) > 3  # backoff, not one try and not a hot loop
    assert retry_seconds() >= 60  # the default window is minutes, not seconds


def test_telemetry_is_kept_while_storage_is_down() -> None:
    written: list[list[dict]] = []
    down = [True]

    def sink(records: list[dict]) -> None:
        if down[0]:
            raise StorageUnavailable("s3://b at host:1: endpoint unreachable")
        written.append(records)

    buffer = TelemetryBuffer(sink, flush_every=2)
    for step in range(1, 6):
        buffer.add({"step": step})
    assert written == [] and len(buffer.records) == 5
    down[0] = False
    buffer.add({"step": 6})
    assert [r["step"] for batch in written for r in batch] == [1, 2, 3, 4, 5, 6]
