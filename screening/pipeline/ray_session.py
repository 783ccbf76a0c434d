"""Connecting to Ray: the one place the driver starts or joins a cluster (``plan`` counts tar members with it,
``run`` runs the plan on it, the demo starts its own local one)."""

from __future__ import annotations


def ensure_ray(*, dashboard: bool | None = None):
    """Connect to Ray (RAY_ADDRESS or a new local instance) unless connected; ``dashboard=False``: a local instance
    without the dashboard's processes (the demo: less memory)."""
    import signal
    import threading

    import ray

    if not ray.is_initialized():
        main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if main else None
        from screening.pipeline.console import ray_logging_level

        extra = {} if dashboard is None else {"include_dashboard": dashboard}
        ray.init(log_to_driver=True, logging_level=ray_logging_level(), **extra)
        if callable(handler):  # Ray's core worker replaces a SIGTERM handler set before init (the CLI's)
            signal.signal(signal.SIGTERM, handler)
    return ray
