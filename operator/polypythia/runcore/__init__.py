"""The run core: what the local driver and the operator share about runs.

Pure logic, no I/O: the run phases, per-run monitoring (telemetry in, spike events and
checkpoint losses out), the sweep's spike labels and outlier verdicts, rewind decisions
returned as actions, and the scheduling rules (dependent runs, failure budget, pending
timeout). The driver (processes) and the operator (RayJobs) only carry out its actions.
"""
