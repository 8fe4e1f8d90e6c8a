"""The storage preflight: which URIs a sweep needs, how they are probed (against moto),
the condition and Event it gives, and its backoff."""

from __future__ import annotations

import io

import pytest

from polypythia.k8s import preflight as P
from polypythia.k8s import reconcile as R
from support.moto_s3 import free_port, shared_s3_server

NOW = "2026-12-02T01:00:00Z"


def _spec(bucket: str, **data: str) -> dict:
    return {"storage": {"bucket": bucket, "secure": False}, "data": data}


def test_targets_are_the_bucket_and_every_s3_data_file() -> None:
    spec = _spec(
        "sweeps",
        path="s3://corpus/pile/pile_text_document",
        validationPath="/data/held_out",  # inside the image: the trainer checks it
        tokenizer="s3://corpus/tokenizer.json",
    )
    assert [(t.field, t.uri) for t in P.targets(spec)] == [
        ("spec.storage.bucket", "s3://sweeps"),
        ("spec.data.path", "s3://corpus/pile/pile_text_document.bin"),
        ("spec.data.path", "s3://corpus/pile/pile_text_document.idx"),
        ("spec.data.tokenizer", "s3://corpus/tokenizer.json"),
    ]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    server = shared_s3_server()
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    return server


def test_probe_names_a_missing_bucket_then_a_missing_data_file(s3) -> None:
    spec = _spec("no-such-bucket-here", path="s3://nope/x")
    finding = P.probe(P.targets(spec), P.opener_for(spec, (None, None), s3.url))
    assert (finding.ok, finding.reason) == (False, "BucketMissing")
    assert finding.message.startswith("spec.storage.bucket: bucket s3://no-such-bucket-here ")
    bucket = s3.make_bucket()
    s3.client().put_object(bucket, "corpus/d.bin", io.BytesIO(b"x"), 1)
    spec = _spec(bucket, path=f"s3://{bucket}/corpus/d")
    finding = P.probe(P.targets(spec), P.opener_for(spec, (None, None), s3.url))
    assert (finding.ok, finding.reason) == (False, "DataMissing")
    assert f"s3://{bucket}/corpus/d.idx does not exist" in finding.message
    s3.client().put_object(bucket, "corpus/d.idx", io.BytesIO(b"x"), 1)
    finding = P.probe(P.targets(spec), P.opener_for(spec, (None, None), s3.url))
    assert (finding.ok, finding.reason) == (True, "Reachable")


def test_an_unreachable_endpoint_is_its_own_reason() -> None:
    spec = _spec("sweeps")
    down = f"http://127.0.0.1:{free_port()}"
    finding = P.probe(P.targets(spec), P.opener_for(spec, ("k", "s"), down))
    assert (finding.ok, finding.reason) == (False, "StorageUnreachable")
    assert "spec.storage.bucket: s3://sweeps" in finding.message and "127.0.0.1" in finding.message


def _outcome() -> R.Outcome:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "Running",
        "message": "",
        "lastTransitionTime": NOW,
    }
    create = R.CreateRayJob("s-nano-s0", 0, {"metadata": {"name": "s-nano-s0-a0"}})
    return R.Outcome(actions=[create], status={"phase": "Running", "conditions": [ready]})


def _cond(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_gate_holds_new_rayjobs_with_a_condition_and_one_event_per_change() -> None:
    missing = P.Finding(False, "BucketMissing", "spec.storage.bucket: bucket s3://b does not exist")
    held = P.gate(_outcome(), missing, {}, NOW, 3)
    assert not [a for a in held.actions if isinstance(a, R.CreateRayJob)]
    storage = _cond(held.status, P.CONDITION)
    assert (storage["status"], storage["reason"], storage["observedGeneration"]) == (
        "False",
        "BucketMissing",
        3,
    )
    assert _cond(held.status, "Ready")["reason"] == "BucketMissing"
    events = [a for a in held.actions if isinstance(a, R.Event)]
    assert [(e.reason, e.type) for e in events] == [("BucketMissing", "Warning")]
    again = P.gate(_outcome(), missing, held.status, NOW, 3)  # next pass, same finding
    assert not [a for a in again.actions if isinstance(a, R.Event)]
    ok = P.Finding(True, "Reachable", "reachable: s3://b")
    cleared = P.gate(_outcome(), ok, again.status, NOW, 3)
    assert [a.run for a in cleared.actions if isinstance(a, R.CreateRayJob)] == ["s-nano-s0"]
    assert _cond(cleared.status, P.CONDITION)["status"] == "True"
    assert _cond(cleared.status, "Ready")["status"] == "True"
    assert [(e.reason, e.type) for e in cleared.actions if isinstance(e, R.Event)] == [
        ("StorageReady", "Normal")
    ]


def test_failed_checks_back_off_and_a_spec_edit_checks_at_once() -> None:
    now = [0.0]
    pre = P.Preflight(clock=lambda: now[0])
    wanted = P.targets(_spec("b"))
    bad = P.Finding(False, "BucketMissing", "")
    waits = []
    for _ in range(7):
        assert pre.due(wanted)
        pre.record(wanted, bad)
        waits.append(pre.next_at - now[0])
        now[0] = pre.next_at
    assert waits == [10, 20, 40, 80, 160, 300, 300]
    pre.record(wanted, bad)
    now[0] += 1
    assert not pre.due(wanted) and pre.due(P.targets(_spec("other")))
    pre.record(wanted, P.Finding(True, "Reachable", ""))
    assert pre.next_at - now[0] == P.RECHECK_OK_S


def test_no_endpoint_is_a_finding_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POLYPYTHIA_S3_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    spec = _spec("sweeps")
    finding = P.probe(P.targets(spec), P.opener_for(spec, (None, None), None))
    assert (finding.ok, finding.reason) == (False, "StorageRefused")
    assert "no S3 endpoint" in finding.message
