"""The driver collapses the heads into the node cache while Ray starts, for a run on a local Ray with CPU encoders.

A cold first run used to start Ray, probe the precision and start its encoder, and only then collapse (tens of
seconds, on the critical path). The collapse only needs the model and the ROIs, which the plan already has. So, when
this process is about to start a local Ray (the encoders will run on this machine, on its CPU), a thread of the
driver builds the node cache entry (``screening.models.collapsed``) while Ray starts its dataset and encoder
processes. The encoder then maps it (``"hit"``), or waits on the entry's lock while the driver finishes it.

It starts once ``precision="auto"`` is resolved (``go``): a build beside the probe slows the probe's two timings
unevenly, and the probe then chose fp32 on a CPU where bf16 is twice as fast.

Only where there are cores to spare (:data:`MIN_CORES`). On 2 cores (AMD EPYC, 40 photos, benchmarks/README.md) it
moved the collapse off the encoder but not off the critical path: the encoder's process start waited on the same two
cores, and the machine's busy CPU-seconds rose (two pools of torch threads). Where cores are idle while Ray starts
its processes, the build runs in them (a sizing estimate, not a measurement here: docs/pipeline.md).

Nothing depends on it: where it is not wanted, fails or is cut short, the encoders build the entry as before. Its
temporary file is deleted when the run ends first (a refusal, Ctrl-C). The peak is the driver's share of one
build (a few hundred MB besides the file-backed model and matrix pages), before any encoder holds memory.
"""

from __future__ import annotations

import os
import threading

from screening.pipeline.timeline import step


#: Cores a machine needs before the driver builds beside the encoder's start: below it, Ray's process starts and the
#: build share the same cores (CPU-bound both), and two pools of torch threads oversubscribe them.
MIN_CORES = 4
#: ``1``: build even on a smaller machine (the tests: CI has 2 cores); ``0``: never.
ENV = "SCREENING_DRIVER_COLLAPSE"


def wanted(plan) -> bool:
    """Only a run whose encoders run here (it starts, or has started, its own local Ray), computes with a model on
    the CPU, and knows the checkpoint's digest (the cache key), on a machine of :data:`MIN_CORES` cores or more
    (:data:`ENV` overrides)."""
    import ray

    from screening.pipeline.ray_session import owns_local_instance

    forced = os.environ.get(ENV)
    if forced == "0" or (forced != "1" and (os.cpu_count() or 1) < MIN_CORES):
        return False
    local = owns_local_instance(ray) if ray.is_initialized() else not os.environ.get("RAY_ADDRESS")
    return (local and plan.options.encoder_stage == "model" and not plan.options.num_gpus_per_encoder
            and bool(plan.fingerprint.get("checkpoint_sha256")) and hasattr(plan.store, "load_model"))


class CollapsePrebuild:
    """``with CollapsePrebuild(plan):`` builds the node cache entry in a daemon thread while the body runs."""

    def __init__(self, plan):
        self.plan = plan
        self.thread: threading.Thread | None = None
        self.outcome: str | None = None
        self._building = threading.Event()
        self._go = threading.Event()
        self._entry: tuple | None = None

    def __enter__(self):
        if wanted(self.plan):
            self.thread = threading.Thread(target=self._run, name="collapse-prebuild", daemon=True)
            self.thread.start()
        return self

    def go(self) -> None:
        """The build may start (the precision is resolved: nothing is being timed)."""
        self._go.set()

    def __exit__(self, *exc) -> None:
        self._go.set()
        # The run ended while this thread still builds (a refusal, an interrupt): drop its temporary file now
        # (the mapping keeps the pages until the thread or the process ends; nothing is left on disk).
        if self.thread is not None and self.thread.is_alive() and self._building.is_set() and self._entry:
            from screening.models.collapsed import cache_dir_for, sweep_parts

            d, key = self._entry
            sweep_parts(cache_dir_for(d), key)

    def _run(self) -> None:
        self._go.wait()
        with step("collapse (driver, beside Ray's start)") as info:
            try:
                info["outcome"] = self.outcome = self._build()
            except Exception as exc:   # the encoders build it then; say why in the manifest
                info["outcome"] = self.outcome = f"failed ({type(exc).__name__}: {exc})"[:300]

    def _build(self) -> str:
        import torch

        if torch.cuda.is_available():
            return "skipped: the encoders collapse on the GPU"
        from screening.models.collapsed import collapse_key, ensure_entry
        from screening.models.encoder import collapse_heads, collapsed_shape

        plan = self.plan
        subjects, rois = list(plan.subjects), dict(plan.rois)
        cache_dir = getattr(plan.store, "cache_dir", None)
        key = collapse_key(plan.fingerprint["checkpoint_sha256"], subjects, rois)
        model, _ = plan.store.load_model(plan.model_id)
        self._entry = (cache_dir, key)
        return ensure_entry(key, collapsed_shape(model, subjects, rois),
                            lambda out: collapse_heads(model, subjects, rois, out=out, release_heads=True)[1],
                            cache_dir=cache_dir, on_lock=self._building.set)
