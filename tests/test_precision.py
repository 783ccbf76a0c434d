"""precision="auto" (``screening.hardware``): the rule on every kind of device, the probe that must confirm a CPU's
claim of native bf16, the real machine's answer, and how a run records and keeps what it resolved."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from screening.exceptions import InvalidParameterError
from screening.hardware import MIN_GAIN, Capabilities, PrecisionChoice, precision_rule, resolve_precision

AMX = Capabilities("cpu", "x86_64", "Intel Xeon (Sapphire Rapids)", "AVX512", amx_bf16=True, avx512_bf16=True)
AVX512_BF16 = Capabilities("cpu", "x86_64", "AMD EPYC 9654 (Zen 4)", "AVX512", avx512_bf16=True)
AVX512 = Capabilities("cpu", "x86_64", "Intel Xeon (Skylake)", "AVX512")
AVX2 = Capabilities("cpu", "x86_64", "AMD EPYC 7763 (Zen 3)", "AVX2")
ARM_BF16 = Capabilities("cpu", "aarch64", "Neoverse-V1", "SVE256", arm_bf16=True)
ARM = Capabilities("cpu", "aarch64", "Neoverse-N1", "DEFAULT")


def cuda(cc):
    return Capabilities("cuda", "x86_64", cuda_name="GPU", cuda_capability=cc)


@pytest.mark.parametrize("caps, want, why", [
    (AMX, "bf16", "AMX-BF16"),
    (AVX512_BF16, "bf16", "AVX512-BF16"),
    (AVX512, "fp32", "no native bf16"),
    (AVX2, "fp32", "no native bf16 on this CPU (torch CPU capability AVX2)"),
    (ARM_BF16, "bf16", "Arm BF16"),
    (ARM, "fp32", "no native bf16"),
    (cuda((9, 0)), "bf16", "9.0 has bf16 tensor cores"),
    (cuda((8, 0)), "bf16", "8.0 has bf16 tensor cores"),
    (cuda((7, 5)), "fp16", "no bf16 or TF32"),
    (cuda((7, 0)), "fp16", "fp16 tensor cores"),
    (cuda((6, 1)), "fp32", "no tensor cores"),
])
def test_rule_covers_every_kind_of_device(caps, want, why):
    got, reason = precision_rule(caps)
    assert got == want and why in reason


def _probe(gain):
    def probe(threads):
        return {"fp32_ms": 10.0, "bf16_ms": 10.0 / gain, "gain": gain}
    return probe


def _no_probe(threads):
    raise AssertionError("the probe ran where the rule needs no measurement")


def test_a_cpu_that_claims_bf16_must_measure_it_faster():
    fast = resolve_precision(caps=AMX, probe=_probe(6.1))
    assert (fast.precision, fast.rule, fast.probe["gain"]) == ("bf16", "bf16", 6.1)
    assert "6.10x faster" in fast.why
    slow = resolve_precision(caps=AVX512_BF16, probe=_probe(0.56))
    assert (slow.precision, slow.rule) == ("fp32", "bf16")
    assert "only 0.56x" in slow.why and f"below {MIN_GAIN}x" in slow.why
    edge = resolve_precision(caps=AMX, probe=_probe(MIN_GAIN * 0.99))
    assert edge.precision == "fp32"


@pytest.mark.parametrize("caps", [AVX2, AVX512, ARM, cuda((8, 0)), cuda((7, 5)), cuda((6, 0))])
def test_no_probe_where_flags_say_no_bf16_or_on_gpus(caps):
    got = resolve_precision(caps=caps, probe=_no_probe)
    assert got.precision == precision_rule(caps)[0] and got.probe is None


def test_choice_is_a_plain_record_and_errors_pickle():
    rec = resolve_precision(caps=AVX2, probe=_no_probe).record()
    assert rec["precision"] == "fp32" and "AMD EPYC 7763" in rec["hardware"]
    assert PrecisionChoice(**rec) == resolve_precision(caps=AVX2, probe=_no_probe)
    with pytest.raises(InvalidParameterError, match="device='tpu' is not valid here; valid devices: cpu, cuda") as e:
        precision_rule(Capabilities("tpu"))
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)


def _proc_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.split(":")[0].strip() in ("flags", "Features"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads /proc/cpuinfo (Linux)")
def test_this_machine_flags_lead_to_the_rule():
    caps = Capabilities.from_this_machine("cpu")
    flags = _proc_flags()
    native = bool({"amx_bf16", "avx512_bf16"} & flags) or (caps.arch in ("aarch64", "arm64") and "bf16" in flags)
    assert precision_rule(caps)[0] == ("bf16" if native else "fp32"), caps
    assert caps.cpu_model and caps.torch_cpu_capability


def _resolve_in_child(env_extra: dict) -> dict:
    code = ("import json; from screening.hardware import resolve_record; "
            "print(json.dumps(resolve_record('cpu', 2)))")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env_extra}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(240)
def test_flags_that_lie_are_caught_by_the_probe():
    """oneDNN capped to AVX2 (ONEDNN_MAX_CPU_ISA) runs bf16 emulated whatever the CPUID flags say: the probe sees it
    and keeps fp32. On a CPU whose flags already say no bf16 the rule gives fp32 without a probe."""
    capped = _resolve_in_child({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert capped["precision"] == "fp32", capped
    if capped["rule"] == "bf16":   # this CPU claims native bf16: only the measurement could refuse it
        assert capped["probe"]["gain"] < MIN_GAIN, capped


def test_an_encoder_on_another_kind_of_node_keeps_the_run_precision_and_says_so():
    from screening.pipeline.stages import other_node_notice

    msg = other_node_notice("cpu", "bf16", "bf16", caps=AVX2)
    assert "would choose precision 'fp32'" in msg and "resolved 'bf16' on another node" in msg
    assert "uses the run's 'bf16'" in msg
    assert other_node_notice("cpu", "bf16", "bf16", caps=AMX) is None
    assert other_node_notice("cpu", "fp32", None, caps=AVX2) is None    # precision asked for: nothing to say


def test_config_key_carries_the_resolved_precision():
    from screening.pipeline.plan import _config_key, recorded_precision

    src = {"fingerprint": {"sha": "x"}, "subjects": ["sub-01"], "n_vertices": {}, "roi_hash": {}}
    keys = {p: _config_key(src, p) for p in ("fp32", "bf16", "fp16")}
    assert len(set(keys.values())) == 3
    assert recorded_precision({"u0": {"config_key": keys["bf16"]}}, src) == "bf16"
    assert recorded_precision({"u0": {"config_key": "0123"}}, src) is None
    assert recorded_precision({}, src) is None


def test_api_auto_resolves_on_the_device(visual_store):
    from screening.api import BERG

    berg = BERG(str(visual_store))
    model = berg.get_encoding_model("fmri-mosaic-CNN8_multihead_subNSD_verticesVisual", subject=1,
                                    selection={"roi": ["V1"]}, device="cpu", precision="auto")
    want = resolve_precision("cpu").precision
    assert model.precision == model.precision_choice["precision"]
    assert model.precision in ("fp32", "bf16") and model.precision_choice["hardware"]
    # the probe may land either side only on a CPU where bf16 barely differs; the rule alone is stable
    assert model.precision_choice["rule"] == precision_rule(Capabilities.from_this_machine())[0]
    assert want in ("fp32", "bf16")
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    out = berg.encode(model, x, reduce="roi_mean")["NaturalScenesDataset"]["sub-01"]
    assert out.shape == (2, 1) and np.isfinite(out).all()
