"""polypythia: PolyPythias-style pre-training sweeps on Kubernetes or one machine."""

__version__ = "0.1.0"
