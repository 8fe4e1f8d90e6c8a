"""Workload identity: with no static keys, the store takes credentials from a web-identity
token (IRSA, GKE/EKS workload identity) through STS ``AssumeRoleWithWebIdentity``, against
a moto server that enforces IAM (an unsigned or unknown-key request is refused).

moto 5.2 answers the (unsigned) ``AssumeRoleWithWebIdentity`` with HTTP 500 while it
enforces IAM, so a test lets exactly one action through unauthenticated (the STS call,
which must come first) and every S3 request after it is checked against IAM.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from polypythia.storage import RunStore, StorageError, open_store
from support.moto_s3 import S3Server, start_s3_server

ROLE_NAME = "polypythia-trainer"
READONLY_ROLE = "polypythia-reader"
BUCKET = "identity-bucket"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.signature"
CLEARED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


@pytest.fixture(scope="module")
def iam_server() -> Iterator[tuple[S3Server, str]]:
    """A moto server of its own (IAM enforcement is server-wide) with a role allowed S3
    and a bucket; requests are authenticated from then on."""
    server = start_s3_server()
    try:
        admin = {
            "endpoint_url": server.url,
            "region_name": server.region,
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **admin)
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/k8s"},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                }
            ],
        }
        role = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
        allow = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="s3", PolicyDocument=json.dumps(allow))
        read = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
        }
        iam.create_role(RoleName=READONLY_ROLE, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(
            RoleName=READONLY_ROLE, PolicyName="read", PolicyDocument=json.dumps(read)
        )
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        yield server, role["Role"]["Arn"]
    finally:
        server.stop()


def enforce_iam(server: S3Server, free_actions: int = 0) -> None:
    """From now on moto checks every request's signature and IAM policy, after the
    next ``free_actions`` actions."""
    request = urllib.request.Request(
        f"{server.url}/moto-api/reset-auth",
        data=str(free_actions).encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def no_static_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A pod without a credentials Secret: no keys, no profile, no instance metadata."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return tmp_path


def test_a_web_identity_token_gives_the_store_its_credentials(
    iam_server, no_static_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, role_arn = iam_server
    token = no_static_keys / "token"
    token.write_text(TOKEN)  # what the kubelet projects into the pod
    monkeypatch.setenv("AWS_ROLE_ARN", role_arn)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", server.url)
    enforce_iam(server, free_actions=1)  # the STS call
    run = RunStore.open(f"s3://{BUCKET}/sweeps/s/s-nano-s0", endpoint=server.url)
    run.write_run_config({"run": "s-nano-s0", "seed": 0})
    assert run.read_run_config()["seed"] == 0
    assert run.store.list("sweeps/") == ["sweeps/s/s-nano-s0/run.json"]


def test_a_role_without_s3_access_is_refused_naming_the_identity(
    iam_server, no_static_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, role_arn = iam_server
    token = no_static_keys / "token"
    token.write_text(TOKEN)
    readonly = role_arn.replace(ROLE_NAME, READONLY_ROLE)
    monkeypatch.setenv("AWS_ROLE_ARN", readonly)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", server.url)
    enforce_iam(server, free_actions=1)
    store, _ = open_store(f"s3://{BUCKET}/x", endpoint=server.url)
    with pytest.raises(StorageError) as refused:
        store.put_bytes("a", b"not allowed")
    message = str(refused.value)
    assert f"s3://{BUCKET}/a" in message and "AccessDenied" in message
    assert f"role {readonly}" in message and "S3 policy" in message
    assert TOKEN not in message


def test_an_unreadable_token_file_is_a_message_not_a_traceback(
    iam_server, no_static_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, role_arn = iam_server
    missing = no_static_keys / "no-such-token"
    monkeypatch.setenv("AWS_ROLE_ARN", role_arn)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(missing))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", server.url)
    enforce_iam(server)
    store, _ = open_store(f"s3://{BUCKET}/x", endpoint=server.url)
    with pytest.raises(StorageError, match=rf"web identity \(role {role_arn}, token {missing}\)"):
        store.get_bytes("a")
