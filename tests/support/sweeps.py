"""PolyPythiaSweep objects for tests, as `kubectl apply` or `polypythia run` read them."""

from __future__ import annotations

API_VERSION = "polypythia.io/v1alpha1"
KIND = "PolyPythiaSweep"


def sweep_object(name: str, spec: dict, **metadata: str) -> dict:
    """A sweep named ``name`` with ``spec`` (the CRD fills in its defaults); ``metadata``
    adds fields such as ``namespace``."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }
