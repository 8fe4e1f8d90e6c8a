"""The Kubernetes operator: render RayJobs and eval Jobs, reconcile sweeps, run kopf."""
