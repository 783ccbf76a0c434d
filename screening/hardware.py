"""Which core precision is fastest where an encoder runs: ``precision="auto"`` (docs/precision.md).

The rule, from the device's capabilities (:func:`precision_rule`):

- CPU: ``bf16`` only where the CPU computes bf16 natively (x86 AMX or AVX-512 BF16; aarch64's BF16 extension),
  else ``fp32``. Without native bf16, autocast is emulated: 0.13-0.16x fp32 (AVX2 EPYC; this Xeon capped to AVX2).
- CUDA: ``bf16`` from compute capability 8.0 (bf16 tensor cores); ``fp16`` on 7.x (Volta / Turing: fp16 tensor cores,
  no bf16 and no TF32 there); ``fp32`` below 7.0 (no tensor cores: halves gain nothing or run slower).

Flags can say "native" and still lose (AVX-512 BF16 without AMX measured 0.56x fp32 on a Xeon; a kernel that does not
grant AMX state), so where the rule says bf16 on a CPU, :func:`resolve_precision` times one core layer each way
(~0.2 s) and keeps bf16 only if it is at least ``MIN_GAIN`` x faster. Flags that say "not native" are not measured:
oneDNN reads the same CPUID, so hidden flags mean unusable bf16 kernels. GPUs are not measured: their compute
capability does not lie.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass

from screening.exceptions import InvalidParameterError

#: Core precisions of the encoders: ``fp32`` is the published maths; ``bf16``/``fp16`` autocast the core after block1.
#: fp16 is CUDA only: on CPUs float16 autocast is no fast path of ours (bf16 is), and its agreement is measured on GPU.
PRECISIONS = ("fp32", "bf16", "fp16")
CUDA_ONLY_PRECISIONS = ("fp16",)
AUTO = "auto"
#: What a user may ask for: a precision, or ``auto`` (the fastest one where the encoder runs).
PRECISION_CHOICES = PRECISIONS + (AUTO,)
#: bf16 must beat fp32 by this factor in the probe: within it, fp32 (the published maths) is kept, and costs < 10%.
MIN_GAIN = 1.1
#: The probe layer: one 3x3 conv of the core's width at 56x56 (blocks 5-6's shape), batch 1, as the encoder runs it.
PROBE_SHAPE = (384, 56)


def check_precision(precision, device: str, *, allow_auto: bool = False) -> str:
    """``precision`` is one of PRECISIONS (or ``auto`` where allowed) and runs on ``device`` ("cpu" or "cuda")."""
    valid = PRECISION_CHOICES if allow_auto else PRECISIONS
    if precision not in valid:
        raise InvalidParameterError(f"precision={precision!r} is not valid; valid values: "
                                    f"{', '.join(map(repr, valid))}")
    if precision in CUDA_ONLY_PRECISIONS and device != "cuda":
        cpu_ok = ", ".join(repr(p) for p in PRECISIONS if p not in CUDA_ONLY_PRECISIONS)
        raise InvalidParameterError(f"precision={precision!r} needs a CUDA device (float16 autocast on a CPU "
                                    f"measured slower than fp32) but this runs on {device!r}; valid precisions on a "
                                    f"CPU: {cpu_ok}")
    return precision


@dataclass(frozen=True)
class Capabilities:
    """What decides the precision on one device. ``from_this_machine`` reads them; tests build them by hand."""

    device: str                      # "cpu" or "cuda"
    arch: str = ""                   # platform.machine(): x86_64, aarch64, arm64 ...
    cpu_model: str = ""
    torch_cpu_capability: str = ""   # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    amx_bf16: bool = False
    avx512_bf16: bool = False
    arm_bf16: bool = False
    cuda_name: str = ""
    cuda_capability: tuple[int, int] | None = None

    @classmethod
    def from_this_machine(cls, device: str = "cpu") -> "Capabilities":
        import torch

        arch = platform.machine().lower()
        flags = cpu_flags()
        cpu = torch.cpu
        caps = dict(device=device, arch=arch, cpu_model=cpu_model_name(),
                    torch_cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
                    amx_bf16=bool(_call(getattr(cpu, "_is_amx_tile_supported", None)) or "amx_bf16" in flags),
                    avx512_bf16=bool(_call(getattr(cpu, "_is_avx512_bf16_supported", None)) or "avx512_bf16" in flags),
                    arm_bf16=arch in ("aarch64", "arm64") and "bf16" in flags)
        if device == "cuda":
            if not torch.cuda.is_available():
                raise InvalidParameterError("precision='auto' on device 'cuda', but torch sees no CUDA device")
            caps.update(cuda_name=torch.cuda.get_device_name(),
                        cuda_capability=tuple(torch.cuda.get_device_capability()))
        return cls(**caps)

    def describe(self) -> str:
        if self.device == "cuda":
            cc = ".".join(map(str, self.cuda_capability or ()))
            return f"{self.cuda_name or 'CUDA device'} (compute capability {cc})"
        native = [n for n, on in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16),
                                  ("ARM BF16", self.arm_bf16)) if on]
        return (f"{self.cpu_model or self.arch or 'CPU'} (torch CPU capability {self.torch_cpu_capability or '?'}; "
                f"native bf16: {', '.join(native) or 'none'})")


def _call(fn) -> bool:
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # noqa: BLE001 - a torch build without the probe: fall back to /proc/cpuinfo
        return False


def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The first /proc/cpuinfo value under one of ``keys`` (None where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """x86 ``flags`` / aarch64 ``Features`` of /proc/cpuinfo."""
    return set((_cpuinfo(("flags", "Features")) or "").split())


def cpu_model_name() -> str:
    return _cpuinfo(("model name", "Model", "CPU part")) or platform.processor() or platform.machine()


def precision_rule(caps: Capabilities) -> tuple[str, str]:
    """``(precision, why)`` from the capabilities alone (no measurement)."""
    if caps.device == "cuda":
        cc = caps.cuda_capability or (0, 0)
        if cc >= (8, 0):
            return "bf16", f"compute capability {cc[0]}.{cc[1]} has bf16 tensor cores"
        if cc >= (7, 0):
            return "fp16", (f"compute capability {cc[0]}.{cc[1]} has fp16 tensor cores but no bf16 or TF32; fp16 "
                            f"keeps 3 more mantissa bits than bf16")
        return "fp32", f"compute capability {cc[0]}.{cc[1]} has no tensor cores"
    if caps.device != "cpu":
        raise InvalidParameterError(f"device={caps.device!r} is not valid here; valid devices: cpu, cuda")
    if caps.amx_bf16:
        return "bf16", "the CPU has AMX-BF16"
    if caps.avx512_bf16:
        return "bf16", "the CPU has AVX512-BF16"
    if caps.arm_bf16:
        return "bf16", "the CPU has the Arm BF16 extension"
    return "fp32", (f"no native bf16 on this CPU (torch CPU capability {caps.torch_cpu_capability or '?'}): bf16 "
                    f"autocast would be emulated, ~0.15x fp32")


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` resolved to on one device, and why (recorded in the manifest)."""

    precision: str
    why: str
    hardware: str
    rule: str                        # what the capabilities alone said
    probe: dict | None = None        # {"fp32_ms": .., "bf16_ms": .., "gain": ..} where measured

    def record(self) -> dict:
        return asdict(self)


def probe_bf16_gain(threads: int | None = None, repeats: int = 3) -> dict:
    """Fastest time of one core layer in fp32 and in bf16 (autocast, channels_last: the encoder's own path)."""
    import torch
    from torch import nn

    width, side = PROBE_SHAPE
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        gen = torch.Generator().manual_seed(0)
        conv = nn.Conv2d(width, width, 3, padding=1).eval()
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.02)
        x = torch.randn(1, width, side, side, generator=gen)
        conv_cl = conv.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def fp32():
            conv(x)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                conv_cl(x_cl)

        # Interleaved, and the fastest of each: another process's burst slows a call but never speeds one up, so
        # the minima compare the two paths even on a busy machine (timed one after the other, a busy stretch over
        # one of them chose fp32 on a CPU where bf16 is twice as fast).
        ts = {"fp32": [], "bf16": []}
        with torch.inference_mode():
            fp32(), bf16()   # first calls: oneDNN picks and builds its kernels
            for _ in range(repeats):
                for name, fn in (("fp32", fp32), ("bf16", bf16)):
                    t = time.perf_counter()
                    fn()
                    ts[name].append(time.perf_counter() - t)
        times = {name: min(v) for name, v in ts.items()}
    finally:
        torch.set_num_threads(old)
    return {"fp32_ms": round(times["fp32"] * 1e3, 3), "bf16_ms": round(times["bf16"] * 1e3, 3),
            "gain": round(times["fp32"] / max(times["bf16"], 1e-9), 3)}


def resolve_precision(device: str = "cpu", *, caps: Capabilities | None = None, threads: int | None = None,
                      probe=probe_bf16_gain) -> PrecisionChoice:
    """``auto`` on this device: the rule, then on CPUs that claim native bf16 a ~0.2 s probe that must confirm it."""
    caps = caps or Capabilities.from_this_machine(device)
    rule, why = precision_rule(caps)
    if caps.device != "cpu" or rule != "bf16":
        return PrecisionChoice(rule, why, caps.describe(), rule)
    result = probe(threads)
    if result["gain"] >= MIN_GAIN:
        return PrecisionChoice("bf16", f"{why}; one core layer measured {result['gain']:.2f}x faster in bf16",
                               caps.describe(), rule, result)
    return PrecisionChoice("fp32", f"{why}, but one core layer measured only {result['gain']:.2f}x fp32's speed in "
                                   f"bf16 (below {MIN_GAIN}x): fp32 kept", caps.describe(), rule, result)


def resolve_record(device: str = "cpu", threads: int | None = None) -> dict:
    """:func:`resolve_precision` as a plain dict (what a Ray task returns to the driver)."""
    return resolve_precision(device, threads=threads).record()
