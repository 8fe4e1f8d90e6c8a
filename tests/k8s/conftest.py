from __future__ import annotations

import pytest

from k8s.harness import Cluster
from support.moto_s3 import shared_s3_server


@pytest.fixture(scope="module")
def cluster():
    """One emulated cluster and operator process per test module."""
    with Cluster(shared_s3_server()) as c:
        c.start_operator()
        yield c
