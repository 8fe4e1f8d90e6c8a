"""`polypythia operator`: run the kopf operator (one active replica) with /metrics and /healthz."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os

from polypythia.errors import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", help="watch only this namespace")
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8000,
        help="port of /metrics (0: off; default: %(default)s)",
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=8080,
        help="port of /healthz (0: off; default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=float(os.environ.get("POLYPYTHIA_POLL_INTERVAL", "10")),
        help="seconds between passes over a sweep (storage polling; default: "
        "$POLYPYTHIA_POLL_INTERVAL or 10, here %(default)s)",
    )
    parser.add_argument(
        "--bind", default="0.0.0.0", help="address of /metrics and /healthz (default: %(default)s)"
    )
    parser.add_argument(
        "--cluster-ttl-seconds",
        type=int,
        default=int(os.environ.get("POLYPYTHIA_RAYJOB_TTL_SECONDS", "0")),
        help="seconds KubeRay keeps a finished run's RayCluster (GPUs) before deleting it (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-interval",
        type=float,
        default=float(os.environ.get("POLYPYTHIA_IDLE_INTERVAL", "3600")),
        help="seconds between passes over a settled (Complete/Failed/Invalid) sweep (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("POLYPYTHIA_LOG_FORMAT", "full"),
        help="log lines on stderr: full (time, logger, level), plain or json "
        "(default: $POLYPYTHIA_LOG_FORMAT or full, here %(default)s)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    verbosity.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only")
    parser.add_argument(
        "--read-sweep-secrets",
        action="store_true",
        default=os.environ.get("POLYPYTHIA_READ_SWEEP_SECRETS", "").lower() in ("1", "true"),
        help="read each sweep's spec.storage.secretName (needs get secrets in its namespace); "
        "default: storage is read with the operator's own credentials",
    )


LOG_FORMATS = ("full", "plain", "json")


def _configure_logging(args: argparse.Namespace) -> None:
    """kopf's own logging set-up (what `kopf run` does): INFO lines on stderr by default, so
    `kubectl logs` shows what the operator does; JSON for log collectors that parse it."""
    import kopf

    kopf.configure(
        verbose=args.verbose,
        quiet=args.quiet,
        log_format=kopf.LogFormat[args.log_format.upper()],
        log_prefix=args.log_format != "json",  # "[namespace/name]" before each object's line
        log_refkey="object" if args.log_format == "json" else None,
    )


def main(args: argparse.Namespace) -> int:
    import kopf
    import kubernetes

    from polypythia.k8s.handlers import Operator, OperatorConfig
    from polypythia.k8s.rayjob import ClusterSettings
    from polypythia.monitoring.exporter import SweepExporter

    if args.poll_interval <= 0:
        raise UsageError(f"--poll-interval: must be > 0 seconds, got {args.poll_interval}")
    if args.idle_interval < args.poll_interval:
        raise UsageError(
            f"--idle-interval: must be >= --poll-interval ({args.poll_interval}), "
            f"got {args.idle_interval}"
        )
    if args.cluster_ttl_seconds < 0:
        raise UsageError(f"--cluster-ttl-seconds: must be >= 0, got {args.cluster_ttl_seconds}")
    if args.log_format not in LOG_FORMATS:
        raise UsageError(
            f"POLYPYTHIA_LOG_FORMAT: {args.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
        )
    pod_defaults = _pod_defaults(os.environ.get("POLYPYTHIA_POD_DEFAULTS", ""))
    for flag in ("metrics_port", "liveness_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            raise UsageError(f"--{flag.replace('_', '-')}: must be 0-65535")
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, FileNotFoundError) as exc:
            raise UsageError(
                f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}"
            ) from None
    client_config = kubernetes.client.Configuration.get_default_copy()
    client_config.connection_pool_maxsize = 16
    config = OperatorConfig(
        trainer_image=os.environ.get("POLYPYTHIA_TRAINER_IMAGE", ""),
        eval_image=os.environ.get("POLYPYTHIA_EVAL_IMAGE", ""),
        storage_endpoint=os.environ.get("POLYPYTHIA_S3_ENDPOINT") or None,
        storage_defaults={
            "endpoint": os.environ.get("POLYPYTHIA_S3_ENDPOINT"),
            "bucket": os.environ.get("POLYPYTHIA_S3_BUCKET"),
            "secretName": os.environ.get("POLYPYTHIA_S3_SECRET_NAME"),
        },
        poll_interval=args.poll_interval,
        idle_interval=args.idle_interval,
        exporter=SweepExporter(),
        cluster=ClusterSettings(
            cluster_ttl_seconds=args.cluster_ttl_seconds,
            pod_defaults=pod_defaults,
            submitter_image=os.environ.get("POLYPYTHIA_SUBMITTER_IMAGE", ""),
        ),
        read_sweep_secrets=args.read_sweep_secrets,
    )
    _configure_logging(args)
    logging.getLogger("polypythia.operator").info(
        "polypythia operator: watching %s; metrics %s; liveness %s; storage polled every %ss",
        f"namespace {args.namespace}" if args.namespace else "all namespaces",
        f"on {args.bind}:{args.metrics_port}" if args.metrics_port else "off",
        f"on {args.bind}:{args.liveness_port}" if args.liveness_port else "off",
        args.poll_interval,
    )
    operator = Operator(config, kubernetes.client.ApiClient(client_config))
    registry = kopf.OperatorRegistry()
    operator.register(registry)
    server = config.exporter.serve(args.metrics_port, addr=args.bind) if args.metrics_port else None
    liveness = f"http://{args.bind}:{args.liveness_port}/healthz" if args.liveness_port else None
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=not args.namespace,
                namespaces=[args.namespace] if args.namespace else [],
                liveness_endpoint=liveness,
            )
        )
    finally:
        if server is not None:
            server.close()
        operator.pool.shutdown(wait=False, cancel_futures=True)
    return 0


def _pod_defaults(text: str) -> dict:
    """POLYPYTHIA_POD_DEFAULTS: a JSON object with spec.pods' fields (chart value runPods)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"POLYPYTHIA_POD_DEFAULTS: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(
            f"POLYPYTHIA_POD_DEFAULTS: expected a JSON object, got {type(value).__name__}"
        )
    return value
