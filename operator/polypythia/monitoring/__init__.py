"""Instability monitoring: loss spikes, cross-seed outliers, metrics, alert actions.

Pure detectors (``spikes``, ``common_mode``, ``outliers``, ``actions``), the sweep's
``spec.instability`` mapping (``settings``), the metric catalogue (``catalog``) and
the Prometheus exporter (``exporter``); the CLIs ``polypythia spikes`` and
``polypythia outliers`` point the same detectors at any log file.
"""
