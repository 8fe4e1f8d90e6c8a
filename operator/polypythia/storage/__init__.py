"""The storage contract shared by operator, trainer and evaluator (docs/contracts.md).

``open_store`` maps a URI to an ObjectStore (local directory or S3/MinIO);
``RunStore`` and ``SweepStore`` know the layout of runs inside it.
"""

from polypythia.storage.base import (
    ObjectStore,
    StorageError,
    StorageFull,
    StorageNotFound,
    StorageUnavailable,
)
from polypythia.storage.drift import (
    config_changes,
    describe_changes,
    describe_shape_changes,
    shape_changes,
)
from polypythia.storage.layout import (
    COMPLETE,
    CheckpointDamaged,
    RunStore,
    SweepStore,
    TelemetryFile,
    resolve_history,
)
from polypythia.storage.lease import ConditionalWritesIgnored, LeaseHeld, LeaseLost, RunLease
from polypythia.storage.local import LocalStore
from polypythia.storage.pins import CheckpointUnavailable
from polypythia.storage.s3 import S3Store
from polypythia.storage.uri import open_store

__all__ = [
    "COMPLETE",
    "CheckpointDamaged",
    "CheckpointUnavailable",
    "ConditionalWritesIgnored",
    "LeaseHeld",
    "LeaseLost",
    "RunLease",
    "StorageFull",
    "config_changes",
    "describe_changes",
    "describe_shape_changes",
    "LocalStore",
    "ObjectStore",
    "RunStore",
    "S3Store",
    "StorageError",
    "StorageNotFound",
    "StorageUnavailable",
    "SweepStore",
    "TelemetryFile",
    "open_store",
    "resolve_history",
    "shape_changes",
]
