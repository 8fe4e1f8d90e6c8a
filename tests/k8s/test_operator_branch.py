"""spec.branch on the operator (issue #19): a branch sweep whose parent cannot start it
gets the Invalid condition naming the field and no RayJob; one whose parent (another
sweep's prefix of the same bucket) holds the checkpoint gets its RayJobs.

The operator process runs against the emulated API server and a moto S3 server; the test
writes the parent into the bucket as a trainer would (run.json, a complete checkpoint).
"""

from __future__ import annotations

from pathlib import Path

from k8s.harness import sweep_body
from polypythia import planner, presets
from polypythia.k8s.rayjob import config_of
from polypythia.spec import sweep_from_object
from polypythia.storage import RunStore


def _branch_body(name: str, bucket: str, parent: str, step: int) -> dict:
    body = sweep_body(name, seeds=2, sizes=("nano",))
    body["spec"]["seeds"]["axis"] = "data"
    body["spec"]["storage"] = {
        "bucket": bucket,
        "secretName": "s3",
        "secure": False,
        "prefix": "mine",
    }
    body["spec"]["branch"] = {"from": {"uri": parent, "step": step}}
    return body


def _write_parent(cluster, bucket: str, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """The run `orig-nano-s0` of another sweep (prefix `other`): run.json and step 10."""
    from polypythia_trainer.config import ModelConfig
    from polypythia_trainer.model import build_model

    orig = sweep_from_object(sweep_body("orig", seeds=1, sizes=("nano",)))
    config = planner.plan_sweep(orig, base_uri=f"s3://{bucket}/other")[0].config
    run = RunStore.open(config["runUri"], endpoint=cluster.s3.url, secure=False)
    run.write_run_config(config)
    folder = tmp_path / "step10"
    build_model(ModelConfig.from_dict(presets.get("nano").model_block()), 0).save_pretrained(folder)
    run.commit_checkpoint(10, folder)
    return config["runUri"]


def test_branch_parent_is_checked_before_any_rayjob(cluster, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name, value in cluster.s3.env.items():
        monkeypatch.setenv(name, value)
    bucket = cluster.namespace_with_storage("br")["bucket"]
    parent = _write_parent(cluster, bucket, tmp_path)

    cluster.apply_sweep("br", _branch_body("early", bucket, parent, step=15))
    status = cluster.wait_for_phase("br", "early", "Invalid")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert "spec.branch.from.step: " in ready["message"]
    assert "no complete checkpoint at step 15; allowed: 10" in ready["message"]
    assert cluster.rayjobs("br", "early") == []

    cluster.apply_sweep("br", _branch_body("good", bucket, parent, step=10))
    jobs = cluster.wait_for(
        "2 RayJobs",
        lambda: len(cluster.rayjobs("br", "good")) == 2 and cluster.rayjobs("br", "good"),
    )
    for job in jobs:
        assert config_of(job)["branch"] == {"parent": parent, "step": 10, "optimizer": "restored"}
    assert cluster.rayjobs("br", "early") == []
