"""Where a run decodes its images: one small strategy object per mode, asked by the config, the plan, the run and
the encoder stage instead of comparing strings.

- ``cpu`` (the default): CPU decode tasks before the encoders, on every CPU of the cluster.
- ``actor``: no decode tasks; each encoder actor decodes its batch's raw bytes in its own threads, with the decode
  tasks' code (the same pixels, so an output resumes across ``cpu`` and ``actor``); the driver does the ``gpu``
  plan's work per image.
- ``gpu``: no decode tasks; GPU encoder actors decode JPEGs with nvJPEG (``screening.device_decode``); pixels differ
  slightly from the CPU path, so the mode is part of the output's configuration key.
"""

from __future__ import annotations

from dataclasses import dataclass

from screening.exceptions import InvalidParameterError

ACTOR_CALLS = 2   # decode="actor" on GPU encoders: concurrent calls per actor (one decoding, one on the model)
ACTOR_DECODE_CPUS = 4.0   # decode="actor": default CPUs (and decode threads) per GPU encoder actor


@dataclass(frozen=True)
class DecodeMode:
    name: str
    decode_tasks: bool        # the plan decodes in CPU tasks before the encoders
    in_actor: bool            # the encoder actor decodes raw rows on its CPU threads, outside its model lock
    on_device: bool           # the encoder actor decodes raw rows on its GPU, under its model lock
    in_config_key: bool       # changes pixels: an output screened with it resumes only with it
    gpu_encoder_cpus: float   # default Ray CPUs per GPU encoder actor

    @property
    def full_size(self) -> bool:
        """Decodes every JPEG at full size (the fast DCT-domain downscale does not apply)."""
        return self.on_device

    @property
    def needs_gpu_encoders(self) -> bool:
        return self.on_device

    def calls_per_actor(self, device: str, null_stage: bool = False) -> int:
        """Concurrent calls per encoder actor: two where decoding in the actor's threads can overlap a GPU forward
        (and the benchmarks' null stage standing in for one); one elsewhere (CPU encoders share the same cores)."""
        return ACTOR_CALLS if self.in_actor and (device == "cuda" or null_stage) else 1

    def check_gpu_encoders(self) -> None:
        """Refuse, before any task, what this mode needs and GPU encoders lack."""
        if not self.on_device:
            return
        import importlib.util

        if importlib.util.find_spec("torchvision") is None:
            raise InvalidParameterError("decode='gpu' (--decode gpu) needs torchvision (its nvJPEG decoder): install "
                                        "the torchvision release made for this torch, or use decode='cpu'")

    def check_cpu_encoders(self, null_stage: bool = False) -> None:
        if self.needs_gpu_encoders and not null_stage:   # the null stage decodes nothing
            raise InvalidParameterError(
                f"decode={self.name!r} (--decode {self.name}) needs GPU encoders, but this run's encoders are CPU "
                f"ones (no GPUs in the cluster, or num_gpus_per_encoder=0); use decode='cpu' (--decode cpu, the "
                f"default)")


MODES = {m.name: m for m in (
    DecodeMode("cpu", decode_tasks=True, in_actor=False, on_device=False, in_config_key=False, gpu_encoder_cpus=1.0),
    DecodeMode("gpu", decode_tasks=False, in_actor=False, on_device=True, in_config_key=True, gpu_encoder_cpus=1.0),
    DecodeMode("actor", decode_tasks=False, in_actor=True, on_device=False, in_config_key=False,
               gpu_encoder_cpus=ACTOR_DECODE_CPUS),
)}
DECODES = tuple(MODES)


def decode_mode(name: str) -> DecodeMode:
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise InvalidParameterError(f"decode={name!r} is not valid; valid values: "
                                    f"{', '.join(map(repr, DECODES))}") from None
