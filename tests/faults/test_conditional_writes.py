"""S3 back-ends that accept a conditional PUT and overwrite anyway (If-None-Match,
If-Match ignored): the lease would let two writers both believe they hold a run. The
lease probes the store before its first acquire and refuses such a store, naming it;
plain moto (which honours the conditions) passes the probe and the lease works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_helpers import nano_config

from polypythia import cli
from polypythia.storage import ConditionalWritesIgnored, RunLease, RunStore
from polypythia.storage.lease import LEASE, PROBE, check_conditional_writes
from support.s3_proxy import ignoring_conditions


@pytest.fixture
def careless(s3_endpoint):
    """The test's bucket behind a proxy that drops If-Match / If-None-Match: (run, its URI,
    the proxy's URL)."""
    with ignoring_conditions(s3_endpoint.endpoint) as proxy:
        uri = f"{s3_endpoint.uri}/t/t-nano-s0"
        yield RunStore.open(uri, endpoint=f"http://{proxy}", secure=False), uri, f"http://{proxy}"


def test_the_proxy_overwrites_what_moto_refuses(s3_endpoint, careless) -> None:
    """The premise: moto itself honours the conditions, the proxied endpoint does not."""
    plain = RunStore.open(f"{s3_endpoint.uri}/t/t-nano-s0", **s3_endpoint.store_kwargs()).store
    assert plain.put_bytes_if_absent("x", b"1") is True
    assert plain.put_bytes_if_absent("x", b"2") is False
    _, version = plain.get_versioned("x")
    assert plain.put_bytes_if_match("x", b"3", "0" * 32) is None
    run, _, _ = careless
    assert run.store.put_bytes_if_absent("x", b"4") is True  # overwrote
    assert run.store.put_bytes_if_match("x", b"5", version) is not None  # stale version: overwrote
    assert plain.get_bytes("x") == b"5"


def test_a_store_that_ignores_conditions_is_refused_before_any_lease(careless) -> None:
    run, _, proxy = careless
    first = RunLease(run, owner="polypythia train first")
    with pytest.raises(ConditionalWritesIgnored) as refused:
        first.acquire(wait=False)
    message = str(refused.value)
    assert "If-None-Match" in message and proxy.removeprefix("http://") in message
    assert "two writers" in message and "\n" not in message
    second = RunLease(RunStore.open(run.uri, endpoint=proxy, secure=False), owner="second")
    with pytest.raises(ConditionalWritesIgnored):
        second.acquire(wait=False)  # neither writer believes it holds the run
    assert run.store.list(run.key("")) == []  # no lease, no probe left behind


def test_a_store_that_ignores_only_if_match_is_refused_too(s3_endpoint) -> None:
    """Create-if-absent alone is not enough: renewal and take-over are If-Match writes."""
    with ignoring_conditions(s3_endpoint.endpoint, frozenset({"if-match"})) as proxy:
        run = RunStore.open(
            f"{s3_endpoint.uri}/t/t-nano-s0", endpoint=f"http://{proxy}", secure=False
        )
        with pytest.raises(ConditionalWritesIgnored, match="ignores If-Match on PUT"):
            RunLease(run, owner="polypythia train").acquire(wait=False)
        assert run.store.list(run.key("")) == []


def test_moto_honours_conditions_and_the_probe_leaves_nothing(s3_endpoint) -> None:
    run = RunStore.open(f"{s3_endpoint.uri}/t/t-nano-s0", **s3_endpoint.store_kwargs())
    check_conditional_writes(run)
    lease = RunLease(run, owner="polypythia train")
    lease.acquire(wait=False)
    assert [k.rsplit("/", 1)[-1] for k in run.store.list(run.key(""))] == [LEASE]
    lease.release()
    assert not [k for k in run.store.list(run.key("")) if PROBE in k]


def test_a_local_folder_passes_the_probe(tmp_path: Path) -> None:
    run = RunStore.open(str(tmp_path / "t" / "t-nano-s0"))
    check_conditional_writes(run)
    assert not list((tmp_path / "t").rglob(f"{PROBE}*"))


def test_train_against_such_a_store_exits_1_with_one_line(careless, tmp_path, capsys) -> None:
    _, uri, proxy = careless
    config = nano_config(uri, storage={"uri": uri, "endpoint": proxy, "secure": False})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert cli.main(["train", "--config", str(path), "--no-ray"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("polypythia train: error: ") and "ignores If-None-Match" in err
    assert len(err.splitlines()) == 1
