"""Turn a :class:`ScreeningPlan` into Ray Data calls; workers write the parts, the driver commits each unit.

The plan, for the pending shards only::

    from_items(shards) -> map_batches(read_units, batch_size=1)           # one read task per shard; rows + identity
      -> map_batches(decode_batch, batch_format="pyarrow", num_cpus=task)    # CPU tasks: bytes -> uint8 224x224
      -> map_batches(EncoderActor, compute=ActorPoolStrategy(min, max),      # GPU (or CPU) actors: ROI means
                     num_gpus=..., batch_size=..., fn_constructor_kwargs=...)
      -> map_batches(write_parts, batch_size=write_batch_size)             # tasks: part files + receipts
      -> iter_batches() on the driver -> UnitSink's ledger                 # receipts only; marker per unit, last
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings

from screening.exceptions import InvalidParameterError, RunLockedError
from screening.pipeline.config import RunConfig
from screening.pipeline.decode_modes import decode_mode
from screening.pipeline.prebuild import CollapsePrebuild
from screening.pipeline.ray_session import ensure_ray
from screening.pipeline.outputs import utcnow
from screening.pipeline.plan import ScreeningPlan, build_plan, check_resources, driver_notice
from screening.pipeline.result import ScreeningResult
from screening.pipeline.sink import UnitSink, write_task
from screening.pipeline.timeline import mark, setup_log_dir, step


# A decode task's measured working set: its input block (a whole shard's bytes: Ray Data merges read_units' chunks
# up to target_max_block_size) plus up to one 128 MiB output block of pixels; 256 MiB was exceeded (274 MiB seen).
DECODE_TASK_MEMORY = 512 * 2**20
READ_CHUNK_ROWS = 256
NODE_WATCH_S = 5.0   # how often the driver looks for nodes that left the cluster (one GCS call)
ENCODER_MAX_RESTARTS = 4   # per encoder actor: enough for preemptions and a lost node, not for an OOM loop


def screen(images, store, out, **options) -> ScreeningResult:
    """Screen images (a folder, Parquet or tar shards, an HDF5 file, a list of paths or URIs) with the MOSAIC CNN8
    encoder on Ray Data.

    Parameters
    ----------
{options}

    Every option is a field of :class:`~screening.pipeline.config.RunConfig`, checked once when it is built;
    ``screen_config(RunConfig(...))`` runs a config built beforehand.

    Returns
    -------
    ScreeningResult

    Raises
    ------
    InvalidParameterError
        Before any Ray work, naming the bad value and the valid ones (``InputChangedError`` for changed inputs).
    RunLockedError
        Another live run holds ``out``.
    UnitsFailedError
        After the run, when some units could not be committed (each named, with its rows or write error); every other
        unit is committed and a rerun redoes only the failed ones.
    """
    return screen_config(RunConfig.of(images, store, out, **options))


screen.__doc__ = screen.__doc__.replace("{options}", RunConfig.parameters_doc())   # each option documented once


_ensure_ray = ensure_ray   # the one name execute() calls (tests replace it to prove a rerun starts no Ray)


def screen_config(config: RunConfig) -> ScreeningResult:
    """Run a :class:`RunConfig` (built by ``RunConfig.of`` / ``RunConfig.from_args``): plan, then execute."""
    with step("plan"):
        plan = build_plan(config)
    return execute(plan)




def execute(plan: ScreeningPlan) -> ScreeningResult:
    """Run the pending units of ``plan`` into its output (``UnitSink``); nothing pending means no Ray or model work."""
    t0 = time.perf_counter()
    with UnitSink(plan) as sink:
        stats, lost = None, []
        if sink.pending:
            with CollapsePrebuild(plan) as prebuild:   # a local Ray's CPU encoders map a matrix built meanwhile
                plan, res = _plan_on_cluster(plan, sink, prebuild)
                if notice := driver_notice(plan, res):
                    print(notice, file=sys.stderr)
                sink.on_write_start(plan)
                with _NodeWatch() as watch:
                    stats = _run_pending(plan, sink.pending, res, sink)
                lost = watch.lost
        return sink.on_write_complete(stats, time.perf_counter() - t0, lost)


PRECISION_PROBE_TIMEOUT_S = 300.0


def _plan_on_cluster(plan: ScreeningPlan, sink: UnitSink, prebuild: CollapsePrebuild | None = None):
    """``(plan, resources)`` once Ray is up: the pool checked against the cluster, and precision="auto" resolved once,
    on a node of the encoders' kind, for the whole output (the sink refuses earlier results of another precision)."""
    with step("ray start"):
        ray = _ensure_ray()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    res = check_resources(plan, ray.cluster_resources(), nodes)
    if plan.precision is None:
        with step("precision auto"):
            plan = plan.with_precision(*_resolve_precision(plan, res))
        sink.check_compatible(plan.config_key)
        res = check_resources(plan, ray.cluster_resources(), nodes)   # the pool sized for the precision it runs
    if prebuild is not None:
        prebuild.go()
    return plan, res


def _resolve_precision(plan: ScreeningPlan, res) -> tuple[str, dict]:
    """``auto``, resolved by one Ray task with an encoder's resources (its node, its threads): the rule of
    ``screening.hardware``, and on a CPU that claims native bf16 a ~0.2 s probe. Every encoder then uses it."""
    import ray

    from screening.hardware import resolve_record

    if plan.options.encoder_stage == "null":   # benchmarks: nothing is computed, nothing to probe
        return "fp32", {"precision": "fp32", "why": "the null encoder stage computes nothing"}
    task = ray.remote(num_cpus=min(1.0, res.num_cpus) if res.num_gpus else res.num_cpus, num_gpus=res.num_gpus,
                      max_retries=2)(resolve_record)
    ref = task.remote(res.device, res.threads)
    try:
        choice = ray.get(ref, timeout=PRECISION_PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise InvalidParameterError(
            f"precision='auto' could not be resolved: the probe task for a {res.device} encoder was not done in "
            f"{PRECISION_PROBE_TIMEOUT_S:.0f} s (no free node of that kind?); give --precision fp32 or bf16") from None
    return choice["precision"], choice


def encoder_pool(decode: str, res, encoder_stage: str = "model"):
    """The encoder stage's ``ActorPoolStrategy``: as many concurrent calls per actor as the decode mode asks for on
    this device (``DecodeMode.calls_per_actor``); several run in true threads, the model behind the stage's lock."""
    from ray.data import ActorPoolStrategy

    calls = decode_mode(decode).calls_per_actor(res.device, null_stage=encoder_stage == "null")
    if calls > 1:
        return ActorPoolStrategy(min_size=res.min_size, max_size=res.max_size,
                                 max_concurrent_calls_per_actor=calls, enable_true_multi_threading=True)
    return ActorPoolStrategy(min_size=res.min_size, max_size=res.max_size)


def build_dataset(plan: ScreeningPlan, pending, res):
    """The Ray Data plan for ``pending`` shards (lazy; nothing runs until it is iterated)."""
    import ray

    from screening.sources import read_units, readers
    from screening.pipeline import stages
    from screening.pipeline.stages import decode_batch

    opts = plan.options
    encoder_cls = stages.NullEncoderActor if opts.encoder_stage == "null" else stages.EncoderActor
    # One read task per shard (read_parquet in Ray 2.60 coalesces small files into one read task, which would make
    # every unit complete only at the very end); rows stream out in chunks of READ_CHUNK_ROWS.
    items = [s.read_item() for s in pending]   # Parquet shards, tar archives or lists of image files
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(read_units, batch_format="pyarrow", batch_size=1, num_cpus=res.task_cpus,
                        fn_kwargs={"spec": plan.spec, "storage": plan.options.storage, "chunk_rows": READ_CHUNK_ROWS,
                                   "kinds": readers(pending)})
    if decode_mode(opts.decode).decode_tasks:   # else the encoder actors decode the raw bytes
        ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=plan.decode_batch_size,
                            num_cpus=res.task_cpus,
                            memory=DECODE_TASK_MEMORY,
                            fn_kwargs={"image_column": plan.spec.image_column, "fast": opts.fast_decode})
    with _no_remote_args_warning():
        ds = ds.map_batches(
            encoder_cls, batch_format="numpy", batch_size=res.batch_size,
            compute=encoder_pool(opts.decode, res, opts.encoder_stage),
            num_gpus=res.num_gpus, num_cpus=res.num_cpus, memory=res.memory,
            fn_constructor_kwargs={"store": plan.store, "model_id": plan.model_id, "subjects": plan.subjects,
                                   "features": opts.features,
                                   "rois": dict(plan.rois), "precision": plan.precision, "device": res.device,
                                   "precision_rule": plan.precision_choice.get("rule"),
                                   "num_threads": res.threads, "forward_chunk": res.forward_chunk,
                                   "checkpoint_sha256": plan.fingerprint.get("checkpoint_sha256"),
                                   "throttle_s": opts.throttle_s, "decode": opts.decode,
                                   "fast_decode": opts.fast_decode, "decode_threads": res.decode_threads,
                                   "image_column": plan.spec.image_column, "setup_log": setup_log_dir(plan.out),
                                   **({"vertex_stats": vertex_stage_args(plan)} if opts.vertex_stats else {})},
            # A killed or preempted encoder is restarted and its in-flight batches rerun (max_task_retries=-1, Ray
            # Data's default), but at most ENCODER_MAX_RESTARTS times (Ray Data's default is forever): an encoder the
            # OOM killer takes each time it starts would loop. Past that the stream raises, and _run_pending fails
            # the open units.
            max_restarts=ENCODER_MAX_RESTARTS,
        )
    # Workers write; the driver gets receipts. Tasks are placed where their input blocks are (Ray's locality-aware
    # scheduling), i.e. mostly on the node that encoded them.
    write, write_kwargs, write_resources = write_task(plan)
    ds = ds.map_batches(write, batch_format="numpy", batch_size=res.write_batch_size, fn_kwargs=write_kwargs,
                        **write_resources)
    return ds


def vertex_stage_args(plan: ScreeningPlan) -> dict:
    """What an encoder's ``VertexStage`` needs: the label spec, where partials go, the model's identity."""
    from screening.models.registry import get_weights

    return {"labels": plan.options.vertex_stats, "layout": plan.layout, "storage": plan.options.storage,
            "model_id": plan.model_id, "variant": get_weights(plan.model_id).variant}


@contextlib.contextmanager
def _no_remote_args_warning():
    """Ray 2.60's map_batches names num_cpus, memory, resources ... but not max_restarts, which still goes through
    the deprecated ``**ray_remote_args`` (a RayDeprecationWarning on every run). That one warning is silenced, only
    where max_restarts is not a named parameter; a Ray that drops it without a name fails every run at once
    (tests/test_pipeline.py's restart test), never silently restarts forever."""
    import inspect

    from ray.data import Dataset

    if "max_restarts" in inspect.signature(Dataset.map_batches).parameters:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        yield


def stream_failure(exc: BaseException) -> str:
    """Why the open units of a stream that raised are failed. An encoder that died past its restarts is named with the
    usual cause, memory."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if "ActorDied" in type(exc).__name__ or "OutOfMemory" in type(exc).__name__ or "actor died" in first.lower():
        return (f"the encoder actor died and was restarted {ENCODER_MAX_RESTARTS} times, then given up "
                f"({type(exc).__name__}: {first}). The usual cause is memory: a process killed by the OOM killer or "
                f"Ray's memory monitor. Give each encoder more memory (--num-encoders fewer per node, fewer ROIs or "
                f"subjects, or nodes with more memory), then rerun: committed units are kept")
    return f"the run's stream failed ({type(exc).__name__}: {first}); rerun to redo the open units"


class _Watcher:
    """A daemon thread that calls ``look()`` every ``every_s`` while the run streams (use as a context manager);
    ``final_look``: once more when it stops."""

    thread_name = "screening-watch"
    final_look = False

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=self.thread_name, daemon=True)

    def look(self) -> None:
        raise NotImplementedError

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.look()
        if self.final_look:
            self.look()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)


class _NodeWatch(_Watcher):
    """Says, once per node, when a node leaves the cluster mid-run; ``lost`` is what the manifest records.

    Ray restarts the encoders that were on it and rebuilds the blocks it held by rerunning their tasks; that needs a
    free CPU on a surviving node. Where restarted encoders hold every CPU left, Ray Data waits for one forever
    (seen on a 1-CPU survivor): the notice says what to do, because the run itself cannot tell waiting from work."""

    def __init__(self, every_s: float = NODE_WATCH_S):
        import ray

        self.ray, self.every_s = ray, every_s
        self.watching = self._alive()   # nodes not yet reported lost
        self.lost: list[dict] = []
        self._start_thread()

    thread_name = "screening-node-watch"
    final_look = True   # a node that died just before the run finished is still reported

    def _alive(self) -> dict:
        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in self.ray.nodes() if n.get("Alive")}

    def look(self) -> None:
        from tqdm.auto import tqdm   # prints above a progress bar, if there is one

        try:
            alive = self._alive()
        except Exception:  # noqa: BLE001 - the GCS briefly unreachable: look again next time
            return
        for node_id in [n for n in self.watching if n not in alive]:
            addr = self.watching.pop(node_id)
            self.lost.append({"node_id": node_id, "address": addr, "at": utcnow()})
            tqdm.write(f"screening: node {node_id[:8]} ({addr}) left the cluster; {len(alive)} node(s) remain. "
                       f"Ray restarts its encoders and reruns the tasks whose blocks it held, which needs a free "
                       f"CPU on a remaining node. If progress stops, add a node, or stop (Ctrl-C) and rerun: "
                       f"committed units are kept.", file=sys.stderr)

STALL_MIN_S = 180.0   # no image written for this long (or 4 encoder batches, if longer): say what waits on what


def stall_after_s(res, width: int) -> float:
    """How long without an image written counts as a stall: 4 batches of the slowest encoder at the measured CPU cost
    (a first batch at the published width on a small node takes minutes), at least STALL_MIN_S. SCREENING_STALL_S
    overrides it."""
    if os.environ.get("SCREENING_STALL_S"):
        return float(os.environ["SCREENING_STALL_S"])
    from screening.pipeline.sizing import encode_core_s

    batch_s = res.batch_size * encode_core_s(width) / max(1, res.threads or 1) if res.device == "cpu" else 0.0
    return max(STALL_MIN_S, 4 * batch_s)


def stall_message(idle_s: float, res, free_cpus: float, total_cpus: float, log: str | None) -> str:
    """What a stalled run says: how long, the CPUs the encoders and the read / decode tasks ask for and what is
    free, and what to do."""
    enc = f"{res.max_size} encoder(s) of {res.num_cpus:g} CPU(s)" + (f" and {res.num_gpus:g} GPU(s)"
                                                                     if res.num_gpus else "")
    head = (f"screening: no image written for {idle_s:.0f} s; Ray has {free_cpus:g} of {total_cpus:g} CPU(s) free, "
            f"the pool is up to {enc}, each read / decode task asks for {res.task_cpus:g} CPU.")
    if free_cpus + 1e-9 < res.task_cpus:
        return (head + " The read / decode tasks are waiting for a CPU that encoders hold: stop (Ctrl-C) and rerun "
                "with fewer or smaller encoders (--num-encoders, --num-cpus-per-encoder); committed units are kept.")
    where = f"Ray's log ({log})" if log else "--verbose"
    return (head + f" CPUs are free, so the encoders may be on a slow batch, or Ray waits on something else "
            f"(memory, a node, the object store): see {where}.")


class StallWatch(_Watcher):
    """Says so on stderr when no image has been written for ``after_s`` (once per such stretch): one clock read per
    ``every_s``, one Ray call only when stalled."""

    def __init__(self, after_s: float, describe, every_s: float | None = None, clock=time.monotonic):
        self.after_s, self.describe, self.clock = after_s, describe, clock
        self.every_s = every_s if every_s is not None else min(10.0, after_s / 4)
        self.last = self.clock()
        self.said: list[str] = []
        self._start_thread()

    thread_name = "screening-stall-watch"

    def beat(self) -> None:
        self.last = self.clock()

    def check(self) -> str | None:
        idle = self.clock() - self.last
        if idle < self.after_s:
            return None
        try:
            msg = self.describe(idle)
        except Exception as exc:  # noqa: BLE001 - the GCS briefly unreachable: say what we know
            msg = f"screening: no image written for {idle:.0f} s (Ray's resources unreadable: {type(exc).__name__})"
        self.last = self.clock()   # the next line after another after_s of silence
        self.said.append(msg)
        from tqdm.auto import tqdm   # above a progress bar, if there is one

        tqdm.write(msg, file=sys.stderr)
        return msg

    def look(self) -> None:
        self.check()


def _stall_watch(plan: ScreeningPlan, res) -> StallWatch:
    import ray

    from screening.pipeline.console import ray_log_path

    def describe(idle_s: float) -> str:
        free, total = ray.available_resources(), ray.cluster_resources()
        return stall_message(idle_s, res, float(free.get("CPU", 0)), float(total.get("CPU", 0)), ray_log_path())

    return StallWatch(stall_after_s(res, int(plan.fingerprint.get("width") or 384)), describe)


def _take(receipts, plan: ScreeningPlan, sink: UnitSink, ledger, bar) -> None:
    if sink.lock.lost.is_set():
        raise RunLockedError(f"out={plan.out!r}: another run took over this output's lock (this run's heartbeat was "
                             f"late); stopping without committing more units")
    n = ledger.add(receipts)
    if bar is not None:
        bar.update(n)


def _run_pending(plan: ScreeningPlan, pending, res, sink: UnitSink):
    import ray.exceptions
    from ray.data import DataContext

    from screening.pipeline.console import is_verbose

    ctx = DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    # Ray Data's own bars only in verbose mode: ours counts committed-ready images, theirs blocks per operator
    ctx.enable_progress_bars = plan.options.progress and is_verbose() and not os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS")
    detectors = ctx.issue_detectors_config.detectors
    if not is_verbose():   # its multi-line memory advice is Ray's log, not ours: the encoders' memory is sized (sizing.py)
        ctx.issue_detectors_config.detectors = [d for d in detectors if d.__name__ != "HighMemoryIssueDetector"]
    bar = None
    if plan.options.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(s.rows for s in pending), unit="img", desc="screening", file=sys.stderr,
                   dynamic_ncols=True)
    ledger = sink.ledger(res.write_batch_size)
    try:
        ledger.commit_empty_units()
        if ledger.units:
            ds = build_dataset(plan, [s for s in pending if s.unit in ledger.units], res)
            # prefetch_batches=0: a receipt is handed over as soon as it exists (with 1, each waited for the next one, so
            # every unit committed one write batch late; no driver CPU difference measured)
            try:
                mark("dataset start")
                first = True
                with _stall_watch(plan, res) as stall:
                    for receipts in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                        if first:
                            mark("first batch written")
                            first = False
                        stall.beat()
                        _take(receipts, plan, sink, ledger, bar)
            except ray.exceptions.RayError as exc:   # the stream gave up: units with every row committed, the rest failed
                ledger.stop(stream_failure(exc))
        return ledger.finish()
    finally:
        ctx.enable_progress_bars = old_bars
        ctx.issue_detectors_config.detectors = detectors
        if bar is not None:
            bar.close()
