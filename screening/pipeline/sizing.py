"""How a CPU-only cluster is split between the encoder actors and the read / decode tasks (docs/pipeline.md,
"Sizing on CPU").

Encoding costs about 300x what decoding does (published width, bf16: ~2 core-s per image against 5-10 ms for a
425 px JPEG), so the encoders get nearly every core: few actors, many torch threads each, and the read / decode
tasks ask for a fraction of a CPU, sized from those two costs. Actors are bounded by memory as well as cores:
each actor's private memory (core, one forward chunk of activations, the runtime) plus, once per node, the
collapsed ROI matrix, memory-mapped from the node cache (``screening.models.collapsed``) and shared by every actor.
Pure functions of the cluster's per-node CPUs and memory: unit-tested without Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from screening.exceptions import InvalidParameterError

# Measured on an Intel Xeon (AMX), 2 cores, synthetic store at the published width (benchmarks/README.md):
ENCODE_CORE_S = 2.0    # core-seconds per image, BERG.encode(reduce="roi_mean", precision="bf16"), width 384
DECODE_CORE_S = 0.010  # core-seconds per 425 px JPEG, preprocess_bytes (5-11 ms on the shared machine)
TASK_HEADROOM = 4.0    # read / decode come in bursts (one batch of 32 at a time): reserve 4x their steady share
MIN_TASK_CPUS = 0.25   # per node: read, decode and write tasks always have room to start
MAX_TASK_SHARE = 0.5   # tiny test models: decoding may cost as much as encoding, never more than half the node
TASK_SLOTS = 4          # read and decode tasks that fit side by side in what is left
MAX_THREADS_PER_ENCODER = 16   # past this, one more actor gains more than more threads in one
RUNTIME_BYTES = 600 * 2**20    # an idle actor process (Python, torch, Ray worker), measured
SPATIAL_PIXELS = 26 * 26
PIXELS_222 = 222 * 222


@dataclass(frozen=True)
class ActorFootprint:
    """Memory of one CPU encoder actor: ``shared`` once per node (the mapped ROI matrix), ``private`` per actor, of
    which ``per_image`` for each of the ``chunk`` images of one forward."""

    shared: int
    private: int
    per_image: int = 0
    chunk: int = 1

    def fits(self, node_memory: float | None) -> int:
        """Actors a node of ``node_memory`` bytes holds (unbounded when the memory is unknown)."""
        if not node_memory:
            return 1 << 30
        return max(0, int((node_memory - self.shared) // self.private))

    def with_chunk(self, chunk: int) -> "ActorFootprint":
        """The same actor with forwards of ``chunk`` images."""
        return ActorFootprint(self.shared, self.private + (chunk - self.chunk) * self.per_image, self.per_image, chunk)


def actor_footprint(width: int, n_outputs: int, precision: str = "bf16",
                    chunk: int | None = None) -> ActorFootprint:
    """Estimated from the shapes: matrix (C·26·26) x (S·R) fp32; core weights twice (as loaded, BN folded); the
    activations of one forward of ``chunk`` images (default: the encoder's CPU_BATCH_SIZE;
    ``encoder.activation_bytes_per_image``) plus the runtime."""
    from screening.models.encoder import CPU_BATCH_SIZE, activation_bytes_per_image

    chunk = CPU_BATCH_SIZE if chunk is None else chunk
    matrix = width * SPATIAL_PIXELS * n_outputs * 4
    core = 2 * 4 * (3 * width * 25 + width * width * 25 + 6 * width * width * 9)
    per_image = activation_bytes_per_image(width, precision)
    return ActorFootprint(shared=matrix, private=RUNTIME_BYTES + core + chunk * per_image, per_image=per_image,
                          chunk=chunk)


def encode_core_s(width: int) -> float:
    """Core-seconds per image: the 3x3 / 5x5 convolutions dominate and scale as width²."""
    return ENCODE_CORE_S * (width / 384) ** 2


def task_reserve(cpus: float, width: int) -> float:
    """CPUs of one node left to read / decode / write tasks: their share of the work, with headroom."""
    share = DECODE_CORE_S / (DECODE_CORE_S + encode_core_s(width))
    return min(cpus * MAX_TASK_SHARE, max(MIN_TASK_CPUS, cpus * share * TASK_HEADROOM))


@dataclass(frozen=True)
class CpuPool:
    min_size: int
    max_size: int
    num_cpus: float      # Ray CPUs per actor
    threads: int         # torch threads per actor
    task_cpus: float     # Ray CPUs per read / decode task
    memory: int          # Ray memory per actor (bytes): its private part
    forward_chunk: int = 1   # images per forward: the footprint's chunk, smaller where memory is short


def _floor4(x: float) -> float:
    return math.floor(x * 1e4) / 1e4  # Ray keeps 4 decimals of a resource


def size_cpu_pool(nodes: Sequence[tuple[float, float | None]], footprint: ActorFootprint, width: int, *,
                  num_encoders=None, num_cpus_per_encoder: float | None = None) -> CpuPool:
    """The actor pool for CPU nodes ``[(cpus, memory bytes or None), ...]``; raise rather than hang."""
    nodes = [(float(c), m) for c, m in nodes if c > 0]
    total = sum(c for c, _ in nodes)
    c = num_cpus_per_encoder
    enc = [cpus - task_reserve(cpus, width) for cpus, _ in nodes]
    if c is not None and c > total:
        raise InvalidParameterError(f"num_cpus_per_encoder={c:g} but the Ray cluster has {total:g} CPU(s); "
                                    f"valid: 0 .. {_floor4(max(enc)):g} (what a node leaves after its read / "
                                    f"decode share)")
    footprint = _fitting_chunk(nodes, footprint)
    mem_fit = [footprint.fits(m) for _, m in nodes]
    usable = [i for i, k in enumerate(mem_fit) if k > 0]
    if not usable:
        raise InvalidParameterError(_no_memory_message(nodes, footprint))
    lo, hi = _bounds(num_encoders)
    if c is None:
        if hi is None:  # few fat actors: one per MAX_THREADS_PER_ENCODER cores, as memory allows
            c = min(enc[i] / min(math.ceil(enc[i] / MAX_THREADS_PER_ENCODER), mem_fit[i]) for i in usable)
        else:
            c = min(max(enc[i] for i in usable), sum(enc[i] for i in usable) / hi)
        c = _floor4(c)
    fits = [min(int(enc[i] / c + 1e-9) if c > 0 else 1, mem_fit[i]) for i in range(len(nodes))]
    n_fit = sum(fits)
    if n_fit == 0:   # an encoder would take the read / decode share too: they could never run (a silent hang)
        raise InvalidParameterError(_no_room_message(c, nodes, enc))
    if lo is not None and lo > n_fit:
        raise InvalidParameterError(_too_many_message(num_encoders, lo, c, nodes, enc, mem_fit, footprint))
    # What the encoders leave on the tightest node, split so that reads and decodes run side by side; never more
    # than any node's reserve: however Ray places the n_fit actors, some node then keeps room for one task.
    left = min(cpus - k * c for (cpus, _), k in zip(nodes, fits))
    task = min(1.0, left / TASK_SLOTS, min(cpus - e for (cpus, _), e in zip(nodes, enc)))
    return CpuPool(min_size=lo or 1, max_size=min(hi, n_fit) if hi else n_fit, num_cpus=c,
                   threads=max(1, round(c)), task_cpus=_floor4(task), memory=footprint.private,
                   forward_chunk=footprint.chunk)


def _fitting_chunk(nodes, footprint: ActorFootprint) -> ActorFootprint:
    """The footprint's own chunk where one actor fits the largest node; else the largest smaller chunk that fits (1 at
    least: a node that cannot hold an actor forwarding one image is refused by the caller)."""
    biggest = max(((m or 0) for _, m in nodes), default=0)
    if not biggest or footprint.fits(biggest):
        return footprint
    chunk = footprint.chunk
    while chunk > 1 and not footprint.with_chunk(chunk).fits(biggest):
        chunk //= 2
    return footprint.with_chunk(chunk)


def _bounds(num_encoders) -> tuple[int | None, int | None]:
    if num_encoders is None:
        return None, None
    if isinstance(num_encoders, tuple):
        return num_encoders
    return num_encoders, num_encoders


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def _no_memory_message(nodes, fp: ActorFootprint) -> str:
    biggest = max((m or 0) for _, m in nodes)
    return (f"one CPU encoder actor needs {_gib(fp.shared)} (the collapsed ROI matrix, shared per node) + "
            f"{_gib(fp.private)} (its own, forwarding {fp.chunk} image(s) at a time), but the largest node of the Ray "
            f"cluster has {_gib(biggest)} of memory for tasks (Ray's 'memory' resource); screen fewer ROIs or "
            f"subjects, give Ray more memory (ray start --memory), or use nodes with more memory")


def _no_room_message(c, nodes, enc) -> str:
    most = _floor4(max(enc))
    return (f"num_cpus_per_encoder={c:g} leaves no room for the read / decode tasks: the largest node has "
            f"{max(n for n, _ in nodes):g} CPU(s) and keeps {max(n for n, _ in nodes) - max(enc):g} of them for "
            f"those tasks, so an encoder may have at most {most:g}; use --num-cpus-per-encoder {most:g} or less "
            f"(or leave it out)")


def _too_many_message(num_encoders, lo, c, nodes, enc, mem_fit, fp: ActorFootprint) -> str:
    by_cores = sum(int(e / c + 1e-9) if c > 0 else 1 for e in enc)
    by_memory = sum(mem_fit)
    return (f"num_encoders={num_encoders!r} needs {lo} encoder actor(s) of {c:g} CPU(s) each; the cluster "
            f"({len(nodes)} node(s), {sum(n for n, _ in nodes):g} CPUs) fits {by_cores} by CPUs (after the read / "
            f"decode share) and {by_memory} by memory ({_gib(fp.private)} each + {_gib(fp.shared)} per node); "
            f"use fewer encoders or a smaller num_cpus_per_encoder")
