"""A branch whose parent lives in another prefix of an S3 store (issue #19, cluster path).

User story: the parent run belongs to another sweep (another prefix, same object store);
the branch reads its checkpoint through S3, never writes there, continues it bit for bit
with the parent's data seed, and records the parent's checksum in its own run.json.
"""

from __future__ import annotations

import copy

from trainer.trainer_helpers import losses, nano_config

from polypythia.storage import RunStore
from polypythia_trainer.launch import run_local
from support.fixtures import s3_endpoint  # noqa: F401


def test_branch_reads_its_parent_through_s3_and_leaves_it_untouched(s3_endpoint) -> None:  # noqa: F811
    storage = {"uri": s3_endpoint.uri, "endpoint": s3_endpoint.url, "secure": False,
               "region": s3_endpoint.server.region}  # fmt: skip
    kwargs = s3_endpoint.store_kwargs()
    parent_uri = f"{s3_endpoint.uri}/other/orig/orig-nano-s0"
    parent_cfg = nano_config("unused", steps=6, storage=storage, runUri=parent_uri)
    assert run_local(copy.deepcopy(parent_cfg))["status"] == "completed"
    parent = RunStore.open(parent_uri, **kwargs)
    before = {k: parent.store.size(k) for k in parent.store.list(parent.prefix + "/")}

    branch_uri = f"{s3_endpoint.uri}/mine/br/br-nano-s0"
    config = nano_config("unused", steps=6, storage=storage, runUri=branch_uri)
    config["checkpoints"]["steps"] = [6]
    config["branch"] = {"parent": parent_uri, "step": 4, "optimizer": "restored"}
    summary = run_local(config)

    assert summary["status"] == "completed"
    branch = RunStore.open(branch_uri, **kwargs)
    assert [r["step"] for r in branch.read_telemetry()] == [5, 6]
    assert losses(branch_uri, **kwargs) == losses(parent_uri, **kwargs)[4:]
    record = branch.read_run_config()["branch"]
    assert record["parent"] == parent_uri and record["optimizer"] == "restored"
    assert record["checksum"].startswith("sha256:")
    assert {k: parent.store.size(k) for k in parent.store.list(parent.prefix + "/")} == before
