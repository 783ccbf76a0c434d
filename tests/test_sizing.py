"""CPU pool sizing (``screening.pipeline.sizing``) and the node cache of collapsed ROI matrices
(``screening.models.collapsed``): the cached matrix is the fresh collapse, bit for bit; a bad entry is rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from screening.exceptions import InvalidParameterError
from screening.pipeline.sizing import (MAX_THREADS_PER_ENCODER, ActorFootprint, actor_footprint, size_cpu_pool,
                                       task_reserve)

GIB = 2**30
PUBLISHED = actor_footprint(384, 8 * 379)   # all 8 subjects x every ROI of the whole-cortex model


def test_published_footprint_matches_the_measured_matrix():
    assert PUBLISHED.shared == 384 * 26 * 26 * 8 * 379 * 4      # 2.9 GiB, the collapsed matrix
    assert 0.75 * GIB < PUBLISHED.private < 1.25 * GIB            # core + 2 images of activations + runtime
    # activations per image as measured at width 384 (benchmarks/README.md, "Forward chunk"): 0.14 / 0.21 GiB
    assert PUBLISHED.per_image == pytest.approx(0.141 * GIB, rel=0.03) and PUBLISHED.chunk == 2
    assert actor_footprint(384, 8 * 379, "fp32").per_image == pytest.approx(0.212 * GIB, rel=0.03)


def test_small_cpu_node_gives_the_encoder_nearly_every_core():
    pool = size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384)
    assert (pool.min_size, pool.max_size, pool.threads) == (1, 1, 2)
    assert pool.num_cpus == pytest.approx(2 - task_reserve(2, 384)) and pool.num_cpus >= 1.75
    assert 0 < pool.task_cpus <= 0.0625                          # read / decode: a fraction of a CPU
    assert pool.memory == PUBLISHED.private


def test_big_node_few_fat_actors_and_memory_bounds_the_count():
    pool = size_cpu_pool([(64, 512 * GIB)], PUBLISHED, 384)
    assert pool.max_size == 4 and pool.threads == MAX_THREADS_PER_ENCODER
    assert 4 * pool.num_cpus <= 64 - task_reserve(64, 384) + 1e-9 and 0 < pool.task_cpus <= 1
    tight = size_cpu_pool([(64, 5 * GIB)], PUBLISHED, 384)       # 2.9 GiB shared + ~1 GiB each: 2 fit
    assert tight.max_size == 2 and tight.threads >= 31            # the cores go to the actors that fit
    two_nodes = size_cpu_pool([(64, 512 * GIB), (64, 5 * GIB)], PUBLISHED, 384)
    assert two_nodes.max_size == 4 + 2 and two_nodes.threads == 16  # one size of actor: 16 threads on both nodes


def test_tiny_models_leave_decoding_half_the_node():
    pool = size_cpu_pool([(2, 20 * GIB)], actor_footprint(16, 8 * 10), 16)
    assert (pool.num_cpus, pool.threads, pool.max_size) == (1.0, 1, 1)


def test_user_overrides_and_their_errors():
    pool = size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384, num_encoders=2)
    assert (pool.min_size, pool.max_size, pool.threads) == (2, 2, 1) and pool.num_cpus == pytest.approx(0.875)
    pool = size_cpu_pool([(8, 64 * GIB)], PUBLISHED, 384, num_cpus_per_encoder=2)
    assert (pool.num_cpus, pool.threads, pool.max_size) == (2, 2, 3)
    with pytest.raises(InvalidParameterError, match=r"num_cpus_per_encoder=64 but the Ray cluster has 2 CPU"):
        size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384, num_cpus_per_encoder=64)
    with pytest.raises(InvalidParameterError, match=r"num_encoders=3 needs 3 encoder actor\(s\) of 1 CPU.*fits 1 by "
                                                    r"CPUs .* and \d+ by memory"):
        size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384, num_encoders=3, num_cpus_per_encoder=1)
    with pytest.raises(InvalidParameterError, match=r"fits 3 by CPUs .* and 1 by memory"):
        size_cpu_pool([(64, 4 * GIB)], PUBLISHED, 384, num_encoders=2, num_cpus_per_encoder=16)
    with pytest.raises(InvalidParameterError, match=r"needs 2.9 GiB \(the collapsed ROI matrix.*forwarding 1 "
                                                    r"image\(s\) at a time\), but the largest node .* 3.5 GiB"):
        size_cpu_pool([(64, 3.5 * GIB)], PUBLISHED, 384)
    assert ActorFootprint(GIB, GIB).fits(None) > 1000           # memory unknown: cores alone decide


# --------------------------------------------------------------------------- node cache of collapsed matrices

@pytest.fixture(scope="module")
def small():
    from screening.models.collapsed import collapse_key
    from screening.models.encoder import CNN8Multihead
    from screening.rois import build_roi_set
    from screening.store.synthetic import synthetic_state_dict

    model = CNN8Multihead.from_state_dict(synthetic_state_dict("visual", seed=0, width=8))
    subjects = ["sub-01", "sub-05"]
    rois = build_roi_set("visual", ["V1", "V2", "FFC", "group_01", "group_05"])
    return model, subjects, rois, collapse_key("sha-of-the-checkpoint", subjects, rois)


def _encoder(small, **kw):
    from screening.models.encoder import RoiEncoder

    model, subjects, rois, key = small
    return RoiEncoder.from_model(model, subjects, rois, precision="fp32", **kw)


def test_cached_matrix_is_the_fresh_collapse_bit_for_bit(small, tmp_path):
    fresh = _encoder(small)
    built = _encoder(small, cache_key=small[3], cache_dir=tmp_path)
    hit = _encoder(small, cache_key=small[3], cache_dir=tmp_path)
    assert (fresh.collapse_source, built.collapse_source, hit.collapse_source) == ("collapsed", "built", "hit")
    for enc in (built, hit):
        assert torch.equal(enc.roi_weights_t, fresh.roi_weights_t) and torch.equal(enc.roi_bias, fresh.roi_bias)
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hit(x), fresh(x))
    assert [p.name for p in (tmp_path / "collapsed").iterdir() if p.name.startswith(".")] == []  # no temp left


def _entry(tmp_path, key):
    return tmp_path / "collapsed" / f"{key}.f32", tmp_path / "collapsed" / f"{key}.json"


@pytest.mark.parametrize("damage, why", [
    ("flip", "data checksum differs"),
    ("truncate", "bytes, expected"),
    ("foreign", "foreign entry"),
    ("header", "unreadable header"),
])
def test_bad_cache_entry_is_refused_and_rebuilt(small, tmp_path, damage, why):
    fresh = _encoder(small)
    _encoder(small, cache_key=small[3], cache_dir=tmp_path)
    data, head = _entry(tmp_path, small[3])
    if damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:-4])
    elif damage == "foreign":  # another key's header (another model / ROI set) under this name
        head.write_text(json.dumps({**json.loads(head.read_text()), "key": "0" * 40}))
    else:
        head.write_text("{not json")
    with pytest.warns(RuntimeWarning, match=why):
        again = _encoder(small, cache_key=small[3], cache_dir=tmp_path)
    assert again.collapse_source == "built"
    assert torch.equal(again.roi_weights_t, fresh.roi_weights_t) and torch.equal(again.roi_bias, fresh.roi_bias)
    assert _encoder(small, cache_key=small[3], cache_dir=tmp_path).collapse_source == "hit"


def test_unusable_cache_dir_collapses_in_memory(small, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="not usable"):
        enc = _encoder(small, cache_key=small[3], cache_dir=blocker)
    assert enc.collapse_source == "memory"
    assert torch.equal(enc.roi_weights_t, _encoder(small).roi_weights_t)


def test_key_names_what_the_matrix_depends_on(small):
    from screening.models.collapsed import collapse_key

    _, subjects, rois, key = small
    assert collapse_key("other-checkpoint", subjects, rois) != key
    assert collapse_key("sha-of-the-checkpoint", subjects[:1], rois) != key
    moved = dict(rois, V1=np.asarray(rois["V1"])[1:])
    assert collapse_key("sha-of-the-checkpoint", subjects, moved) != key
    per_subject = {k: {s: v for s in subjects} for k, v in rois.items()}   # same sets, per-subject form
    assert collapse_key("sha-of-the-checkpoint", subjects, per_subject) == key


def test_a_short_node_gets_smaller_forwards_before_it_is_refused():
    roomy = size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384)
    assert roomy.forward_chunk == PUBLISHED.chunk == 2
    node = PUBLISHED.shared + PUBLISHED.with_chunk(1).private + GIB // 100   # room for one image per forward only
    short = size_cpu_pool([(2, node)], PUBLISHED, 384)
    assert short.forward_chunk == 1 and short.memory == PUBLISHED.private - PUBLISHED.per_image
    with pytest.raises(InvalidParameterError, match=r"forwarding 1 image\(s\)"):
        size_cpu_pool([(2, node - GIB // 10)], PUBLISHED, 384)


# --------------------------------------------------------------------------- no pool that cannot run

def _can_starve(pool, nodes) -> bool:
    """Whether Ray, placing up to ``max_size`` actors of ``num_cpus`` anywhere they fit by CPUs, could leave every
    node with less than one read / decode task's CPUs free (the run would wait forever): each node filled with the
    fewest actors that leave it under ``task_cpus``."""
    c, t = pool.num_cpus, pool.task_cpus
    if c <= 0:
        return False
    need = 0
    for cpus, _ in nodes:
        k = int((cpus - t) / c + 1e-9) + 1        # actors that push this node's free CPUs under t
        if k * c > cpus + 1e-9:                   # it cannot hold that many: it always keeps room
            return False
        need += k
    return need <= pool.max_size


SHAPES = [[(n, m)] for n in (0.5, 1, 1.5, 2, 3, 4, 8, 16, 64, 96) for m in (None, 4 * GIB, 16 * GIB, 512 * GIB)] + \
    [[(2, 16 * GIB), (64, 512 * GIB)], [(64, 512 * GIB), (64, 5 * GIB)], [(1, None), (1, None), (1, None)],
     [(4, 8 * GIB), (0.5, 8 * GIB)], [(96, None), (3, None)]]


@pytest.mark.parametrize("width, n_out", [(16, 8 * 10), (384, 8 * 379)])
def test_no_returned_pool_can_leave_the_tasks_without_a_cpu(width, n_out):
    """Every node shape x every override: the pool is refused (InvalidParameterError), or its max_size encoders,
    however Ray places them, leave some node room for a read / decode task of task_cpus > 0."""
    fp = actor_footprint(width, n_out)
    refused = returned = 0
    for nodes in SHAPES:
        for per in (None, 0.5, 1, 1.75, 1.9, 2, 4, 16, 95):
            for count in (None, 1, 2, 3, (1, 8), (2, 64)):
                try:
                    pool = size_cpu_pool(nodes, fp, width, num_encoders=count, num_cpus_per_encoder=per)
                except InvalidParameterError as exc:
                    assert "\n" not in str(exc) and str(exc), exc
                    refused += 1
                    continue
                returned += 1
                case = (nodes, per, count, pool)
                assert pool.task_cpus > 0 and 1 <= pool.min_size <= pool.max_size, case
                by_cpus = sum(int(cpus / pool.num_cpus + 1e-9) for cpus, _ in nodes) if pool.num_cpus else 1 << 30
                assert pool.min_size <= by_cpus, case        # the pool's minimum can start at all
                assert not _can_starve(pool, nodes), case
    assert refused and returned


def test_an_encoder_that_leaves_no_room_is_refused_with_the_numbers():
    """The reported hang: --num-cpus-per-encoder 2 on a 2-CPU node fit no encoder beside the read / decode share,
    and one was started anyway (max_size = max(1, 0)), holding both CPUs."""
    for per in (2, 1.9):
        with pytest.raises(InvalidParameterError, match=rf"num_cpus_per_encoder={per:g} leaves no room for the read "
                                                        r"/ decode tasks: .* 2 CPU\(s\) .* at most 1\.75; use "
                                                        r"--num-cpus-per-encoder 1\.75 or less"):
            size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384, num_cpus_per_encoder=per)
    pool = size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384, num_encoders=3)     # three small ones fit
    assert (pool.min_size, pool.max_size) == (3, 3) and 3 * pool.num_cpus + pool.task_cpus <= 2
    capped = size_cpu_pool([(2, 20 * GIB)], PUBLISHED, 384, num_encoders=(1, 8), num_cpus_per_encoder=1)
    assert capped.max_size == 1                                                # not 8 actors of 1 CPU on 2 CPUs


@pytest.mark.timeout(240)
@pytest.mark.parametrize("override", [{"num_cpus_per_encoder": 2}, {"num_cpus_per_encoder": 1.9},
                                      {"num_encoders": 3}])
def test_on_a_real_2_cpu_ray_an_override_finishes_or_is_refused_at_the_start(ray_local, visual_store,
                                                                             tmp_path, override):
    """The reported hang, on a real local Ray of 2 CPUs: each override either screens a small input or is refused
    before any Ray work, within the test's deadline (a hang fails it, not the suite's timeout)."""
    import threading

    from screening.pipeline import screen
    from tests.test_pipeline import MODEL_ID, make_shards

    root = tmp_path / "in"
    make_shards(root, 2, 4, seed=71)
    box = {}

    def run():
        try:
            box["result"] = screen(str(root), str(visual_store), str(tmp_path / "out"), model_id=MODEL_ID,
                                   rois=["V1"], subjects=["sub-01"], progress=False, batch_size=4, **override)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(150)
    assert not t.is_alive(), f"{override}: neither finished nor refused in 150 s"
    if "error" in box:
        assert isinstance(box["error"], InvalidParameterError), box["error"]
        assert "leaves no room for the read / decode tasks" in str(box["error"])
        assert not (tmp_path / "out" / "_committed").exists() or not list((tmp_path / "out" / "_committed").iterdir())
    else:
        assert box["result"].images_this_run == 8
    # what the sizing decides for the tiny test model on 2 CPUs: one encoder of at most 1 CPU, or three small ones
    assert ("error" in box) == ("num_cpus_per_encoder" in override)


def test_ensure_entry_builds_once_and_sweeps_a_killed_builders_files(small, tmp_path):
    """The driver's build beside Ray's start (``pipeline.prebuild``) goes through ``ensure_entry``: it builds what an
    encoder then maps bit for bit, never twice, and first deletes the temporary files of a builder that was killed."""
    from screening.models.collapsed import cache_dir_for, ensure_entry
    from screening.models.encoder import collapse_heads, collapsed_shape

    model, subjects, rois, key = small
    d = cache_dir_for(tmp_path)
    d.mkdir(parents=True)
    stale = d / f".{key}.deadbeef.f32.part"
    stale.write_bytes(b"\0" * 64)
    calls = []

    def build(out):
        calls.append(1)
        return collapse_heads(model, subjects, rois, out=out)[1]

    shape = collapsed_shape(model, subjects, rois)
    assert ensure_entry(key, shape, build, cache_dir=tmp_path) == "built" and not stale.exists()
    assert ensure_entry(key, shape, build, cache_dir=tmp_path) == "present" and len(calls) == 1
    hit = _encoder(small, cache_key=key, cache_dir=tmp_path)
    assert hit.collapse_source == "hit" and torch.equal(hit.roi_weights_t, _encoder(small).roi_weights_t)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(OSError):   # no silent in-memory fallback: the driver has no use for the matrix
        ensure_entry(key, shape, build, cache_dir=blocker)
