"""S3 credentials when no static keys are given: the AWS SDK's default chain.

Workload identity on Kubernetes (EKS IRSA: ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``;
EKS Pod Identity: ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` + its token file; GKE or any OIDC
issuer federated to an AWS role the same way), shared config/SSO profiles and instance
roles all come from botocore's provider chain, which also refreshes the short-lived
credentials before they expire. ``AWS_ENDPOINT_URL_STS`` points it at another STS.
This module adapts that chain to the minio SDK's ``Provider`` interface; it does no
credential logic of its own.
"""

from __future__ import annotations

import os
import threading

import botocore.exceptions
import botocore.parsers
import botocore.session
from minio.credentials import Credentials
from minio.credentials.providers import Provider

from polypythia.storage.base import StorageError, StorageUnavailable

WEB_IDENTITY_ENV = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
)


def identity_source() -> str:
    """Where the chain will look first, for messages (never a secret)."""
    if all(os.environ.get(n) for n in WEB_IDENTITY_ENV):
        return (
            f"web identity (role {os.environ['AWS_ROLE_ARN']}, token "
            f"{os.environ['AWS_WEB_IDENTITY_TOKEN_FILE']})"
        )
    if os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return "the container credentials endpoint (EKS Pod Identity)"
    if os.environ.get("AWS_PROFILE"):
        return f"AWS profile {os.environ['AWS_PROFILE']!r}"
    return "the AWS default credential chain"


class AwsChainProvider(Provider):
    """Credentials from botocore's default chain, resolved on first use.

    ``retrieve`` returns None when the chain finds nothing, so requests go unsigned
    (an anonymous, public bucket), exactly as before this provider existed.
    """

    def __init__(self, region: str | None = None) -> None:
        self._region = region
        self._lock = threading.Lock()
        self._resolved = False
        self._creds = None  # botocore Credentials (refreshable ones refresh themselves)

    def _chain(self):
        session = botocore.session.get_session()
        if self._region and not session.get_config_variable("region"):
            session.set_config_variable("region", self._region)
        return session.get_credentials()

    def retrieve(self) -> Credentials | None:  # type: ignore[override]
        """The chain's current credentials (frozen: key, secret and token belong together)."""
        try:
            with self._lock:
                if not self._resolved:
                    self._creds = self._chain()
                    self._resolved = True
                if self._creds is None:
                    return None
                frozen = self._creds.get_frozen_credentials()
        except _UNREACHABLE as exc:
            raise StorageUnavailable(
                f"S3 credentials from {identity_source()}: STS unreachable ({exc})"
            ) from None
        except (botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError) as exc:
            raise StorageError(f"S3 credentials from {identity_source()}: {exc}") from None
        except OSError as exc:  # the projected token file is missing or unreadable
            raise StorageError(
                f"S3 credentials from {identity_source()}: cannot read "
                f"{exc.filename or 'the token file'} ({exc.strerror or exc})"
            ) from None
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            raise StorageError(
                f"S3 credentials from {identity_source()}: {error.get('Code', 'error')}: "
                f"{error.get('Message', '')}"
            ) from None
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)
