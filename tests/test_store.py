"""Model stores: checkpoint contract through the store, restricted unpickling, S3 (moto on loopback),
https download cache. Real files, real servers; the model is the session's width-16 visual store."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from screening import exceptions as E
from screening.exceptions import (CheckpointError, IntegrityError, InvalidParameterError, ModelLoadError,
                                  ModelNotFoundError, StoreError, UnsafePickleError)
from screening.models.registry import PREFIX, SUBJECTS, get_weights, save_checkpoint
from screening.models.encoder import CNN8Multihead
from screening.store import _cache, normalize_subject, open_store
from screening.store._unpickle import load_metadata_npy
from tests.s3server import boto3_client, dummy_credentials, s3_server, upload_dir

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"
ALL = "fmri-mosaic-CNN8_multihead_subNSD_verticesAll"


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCREENING_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def vis_paths(visual_store):
    w = get_weights(VIS)
    root = Path(visual_store)
    return root, root / w.checkpoint_relpath, root / w.store_dir / "metadata" / "NSD"


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copyfile(src, dst)


def _copy_store(vis_paths, dst: Path, checkpoint_sd=None, metadata: dict | None = None) -> Path:
    """A store in ``dst`` that hard-links the session store's files, with optional replacements."""
    root, ckpt, meta_dir = vis_paths
    w = get_weights(VIS)
    (dst / w.store_dir / "encoding_models_weights").mkdir(parents=True)
    (dst / w.store_dir / "metadata" / "NSD").mkdir(parents=True)
    target = dst / w.checkpoint_relpath
    if checkpoint_sd is None:
        _link(ckpt, target)
    else:
        save_checkpoint(checkpoint_sd, target)
    for s in SUBJECTS:
        t = dst / w.metadata_relpath(s)
        if metadata is not None and s in metadata:
            np.save(t, metadata[s], allow_pickle=True)
        else:
            _link(meta_dir / f"{s}.npy", t)
    return dst


# ----------------------------------------------------------------------------------------------------
# checkpoint contract through the store
# ----------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_exact_format(vis_paths):
    root, ckpt, _ = vis_paths
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert len(raw) == 72 and all(k.startswith(PREFIX) for k in raw)
    for k, v in raw.items():
        if k.endswith("num_batches_tracked"):
            assert v.dtype == torch.int64 and v.shape == ()
        else:
            assert v.dtype == torch.float32, k
    assert raw["module.subject_readouts.sub-08_NSD._features"].shape == (7831, 16)
    assert raw["module.subject_readouts.sub-01_NSD.spatial"].shape == (7831, 26, 26)
    store = open_store(root)
    assert store.model_ids() == [VIS]
    model, info = store.load_model(VIS)
    assert (info.width, info.n_vertices) == (16, 7831)
    assert isinstance(model, CNN8Multihead)
    sd = model.state_dict()
    assert set(PREFIX + k for k in sd) == set(raw)
    for k, v in sd.items():
        assert torch.equal(v, raw[PREFIX + k]), k
    # and the unprefixed dict loads through the model's own constructor too
    m2 = CNN8Multihead.from_state_dict({k[len(PREFIX):]: v for k, v in raw.items()})
    assert torch.equal(m2.core.block3[0].weight, model.core.block3[0].weight)


def test_bad_checkpoint_names_missing_extra_and_misshaped(vis_paths, tmp_path):
    raw = torch.load(vis_paths[1], map_location="cpu", weights_only=True)
    sd = {k[len(PREFIX):]: v for k, v in raw.items()}
    del sd["core.block4.1.running_var"]
    sd["core.block9.0.weight"] = torch.zeros(16, 16, 3, 3)
    sd["subject_readouts.sub-03_NSD.bias"] = torch.zeros(7830)
    store = open_store(_copy_store(vis_paths, tmp_path / "bad", checkpoint_sd=sd))
    with pytest.raises(CheckpointError) as ei:
        store.load_model(VIS)
    msg = str(ei.value)
    assert "core.block4.1.running_var" in msg and "core.block9.0.weight" in msg
    assert "subject_readouts.sub-03_NSD.bias: expected (7831,), got (7830,)" in msg
    assert get_weights(VIS).filename in msg  # names the file
    assert isinstance(ei.value, ModelLoadError)


class _Pwn:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_bomb_checkpoint_refused(vis_paths, tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    root = _copy_store(vis_paths, tmp_path / "bomb")
    target = root / get_weights(VIS).checkpoint_relpath
    target.unlink()
    torch.save({"module.core.block1.0.weight": torch.zeros(1), "payload": _Pwn(marker)}, target)
    with pytest.raises(CheckpointError, match="weights_only"):
        open_store(root).load_model(VIS)
    assert not marker.exists()


def test_reduced_width_refused_unless_synthetic(vis_paths, tmp_path):
    # The same width-16 checkpoint, with metadata that does not say synthetic.
    metas = {}
    for s in SUBJECTS:
        m = load_metadata_npy((vis_paths[2] / f"{s}.npy").read_bytes())
        m.pop("synthetic")
        metas[s] = m
    store = open_store(_copy_store(vis_paths, tmp_path / "nonsyn", metadata=metas))
    with pytest.raises(ModelLoadError, match="width 16.*published at width 384"):
        store.load_model(VIS)
    assert store.fingerprint(VIS)["synthetic"] is False


# ----------------------------------------------------------------------------------------------------
# restricted unpickler
# ----------------------------------------------------------------------------------------------------
def _npy_bytes(obj) -> bytes:
    b = io.BytesIO()
    np.save(b, obj, allow_pickle=True)
    return b.getvalue()


def test_unpickler_refuses_code_and_it_does_not_run(tmp_path):
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    arr = np.empty(1, dtype=object)
    arr[0] = _Pwn(marker)
    f = tmp_path / "evil.npy"
    np.save(f, arr, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system"):
        load_metadata_npy(f.read_bytes())
    # a dict holding it, as a metadata file would
    with pytest.raises(UnsafePickleError, match="system"):
        load_metadata_npy(_npy_bytes({"roi": {"L_V1": np.arange(3)}, "x": _Pwn(marker)}))
    assert not marker.exists()


@pytest.mark.parametrize("global_", [b"builtins\neval", b"subprocess\nPopen", b"numpy\nload", b"torch\nload"])
def test_unpickler_refuses_other_globals(global_):
    payload = b"\x80\x03c" + global_ + b"\nX\x01\x00\x00\x001\x85R."
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    with pytest.raises(UnsafePickleError, match=global_.decode().replace("\n", r"\.")):
        load_metadata_npy(buf.getvalue() + payload)


def test_unpickler_loads_real_metadata(vis_paths):
    meta = load_metadata_npy(open(vis_paths[2] / "sub-01.npy", "rb"))
    assert meta["synthetic"] is True
    assert meta["stimuli"]["filenames"].dtype == object
    assert meta["stimuli"]["filenames"][0].endswith(".png")
    assert len(meta["roi"]) == 360 and meta["roi"]["L_V1"].dtype == np.int64
    assert meta["encoding_models"]["vertex_mapping_all"].shape == (7831,)
    assert set(meta["noise_ceiling"]) == {f"{p}_{k}_noiseceiling" for p in ("test", "train", "artificial")
                                          for k in ("n-avg", "n-1")}
    # equals what numpy's own (unsafe) loader gives
    ref = np.load(vis_paths[2] / "sub-01.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(ref["roi"]["R_FFC"], meta["roi"]["R_FFC"])
    np.testing.assert_array_equal(ref["noise_ceiling"]["test_n-avg_noiseceiling"],
                                  meta["noise_ceiling"]["test_n-avg_noiseceiling"])


def test_unpickler_reads_numpy1_pickles_and_scalars():
    obj = {"a": np.arange(4, dtype=np.int32), "s": np.array(["x", "yy"], dtype=object), "u": np.array(["ab"]),
           "f": np.float32(1.5), "i": np.int64(3), "c": 1j, "t": (1, 2.0), "b": b"\x00", "n": None, "ok": True}
    # numpy 1.x wrote protocol-3 pickles naming ``numpy.core.multiarray``
    body = pickle.dumps(np.array(obj, dtype=object), protocol=3)
    body = body.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in body
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "|O", "fortran_order": False, "shape": ()})
    data = head.getvalue() + body
    out = load_metadata_npy(data)
    assert out.keys() == obj.keys() and out["f"] == np.float32(1.5) and out["t"] == (1, 2.0)
    np.testing.assert_array_equal(out["s"], obj["s"])


@pytest.mark.parametrize("data,match", [
    (b"not an npy file at all", "not a readable .npy"),
    (_npy_bytes(np.arange(3)), "object array"),
    (_npy_bytes(np.array([1, 2], dtype=object)), "expected a metadata dict"),
])
def test_unpickler_rejects_non_metadata(data, match):
    with pytest.raises(ModelLoadError, match=match):
        load_metadata_npy(data)


def test_truncated_metadata_is_a_load_error(vis_paths, tmp_path):
    data = (vis_paths[2] / "sub-01.npy").read_bytes()
    store = open_store(_copy_store(vis_paths, tmp_path / "trunc"))
    p = tmp_path / "trunc" / get_weights(VIS).metadata_relpath("sub-02")
    p.unlink()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="sub-02.npy"):
        store.metadata(VIS, 2)


# ----------------------------------------------------------------------------------------------------
# metadata and store API
# ----------------------------------------------------------------------------------------------------
def test_metadata_flat_and_nested_vertex_mapping(vis_paths, tmp_path):
    nested = load_metadata_npy((vis_paths[2] / "sub-02.npy").read_bytes())
    flat = dict(nested)
    enc = flat.pop("encoding_models")
    flat.update(enc)
    store = open_store(_copy_store(vis_paths, tmp_path / "flat", metadata={"sub-02": flat}))
    m = store.metadata(VIS, "sub-02")
    assert "vertex_mapping_all" not in m and "glasser_group_id" not in m
    np.testing.assert_array_equal(m["encoding_models"]["vertex_mapping_all"], enc["vertex_mapping_all"])
    np.testing.assert_array_equal(store.metadata(VIS, 2)["roi"]["L_V1"], store.metadata(VIS, 1)["roi"]["L_V1"])
    # copies: mutating a result does not change the next one
    m["roi"].clear()
    assert len(store.metadata(VIS, 2)["roi"]) == 360


def test_metadata_with_wrong_vertex_count_is_refused(vis_paths, tmp_path):
    bad = load_metadata_npy((vis_paths[2] / "sub-03.npy").read_bytes())
    bad["encoding_models"]["vertex_mapping_all"] = np.arange(10)
    store = open_store(_copy_store(vis_paths, tmp_path / "vc", metadata={"sub-03": bad}))
    with pytest.raises(ModelLoadError, match="10 entries.*7831"):
        store.metadata(VIS, 3)


@pytest.mark.parametrize("subject,expected", [(1, "sub-01"), ("sub-08", "sub-08"), ("3", "sub-03"),
                                              (np.int64(2), "sub-02"), ("sub-1", "sub-01"), ("01", "sub-01"),
                                              ("subj04", "sub-04"), (" S5 ", "sub-05")])
def test_normalize_subject(subject, expected):
    assert normalize_subject(subject) == expected


@pytest.mark.parametrize("subject", [0, 9, "sub-09", True, 1.5, "one", None, "1,2", "all"])
def test_normalize_subject_rejects(subject):
    # the one subject grammar (screening.validation.parse_subjects), limited to exactly one subject
    with pytest.raises(InvalidParameterError, match="valid values|exactly one"):
        normalize_subject(subject)


def test_errors_name_ids_and_paths(vis_paths, tmp_path):
    store = open_store(vis_paths[0])
    with pytest.raises(ModelNotFoundError) as ei:
        store.load_model("fmri-nope")
    assert ALL in str(ei.value) and VIS in str(ei.value) and "present" in str(ei.value)
    with pytest.raises(ModelNotFoundError, match="verticesAll.*not in the store"):
        store.weights(ALL)
    with pytest.raises(StoreError, match="not found"):
        open_store(tmp_path / "does-not-exist")
    broken = _copy_store(vis_paths, tmp_path / "missing")
    ck = broken / get_weights(VIS).checkpoint_relpath
    ck.unlink()
    with pytest.raises(StoreError, match=str(ck).replace(".", r"\.")):
        open_store(broken).load_model(VIS)
    (broken / get_weights(VIS).metadata_relpath("sub-05")).unlink()
    with pytest.raises(StoreError, match=r"sub-05\.npy"):
        open_store(broken).metadata(VIS, 5)
    with pytest.raises(InvalidParameterError, match="published checkpoint filename"):
        open_store("https://example.org/some/other.pth")
    with pytest.raises(InvalidParameterError, match="http://"):
        open_store("http://example.org/" + get_weights(VIS).filename)
    with pytest.raises(InvalidParameterError, match="unsupported"):
        open_store("gs://bucket/x")


def test_fingerprint_and_sha256_sidecar_memo(vis_paths, tmp_path):
    root, ckpt, _ = vis_paths
    store = open_store(root, cache_dir=tmp_path / "c")
    fp = store.fingerprint(VIS)
    want = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert fp == {"model_id": VIS, "variant": "visual", "checkpoint_sha256": want, "synthetic": True, "width": 16}
    # a new process would read the memo: drop the in-process memory and check the memo answers
    _cache._VERIFIED.clear()
    assert store.checkpoint_sha256(VIS) == want
    assert list((tmp_path / "c" / "sha256").glob("*.json"))


def test_store_pickles_and_works_after(vis_paths):
    store = open_store(vis_paths[0])
    store.metadata(VIS, 1)
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 1000  # configuration only, no cached arrays
    assert clone.model_ids() == [VIS]
    assert clone.fingerprint(VIS) == store.fingerprint(VIS)


@pytest.mark.parametrize("name", E.__all__)
def test_exceptions_pickle_round_trip(name):
    cls = getattr(E, name)
    err = cls(f"{name}: something about s3://bucket/key")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == str(err)


# ----------------------------------------------------------------------------------------------------
# S3 (moto server on loopback)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(visual_store):
    """moto S3 with the visual store uploaded to the public bucket ``berg`` under ``mirror/``."""
    with s3_server() as endpoint:
        with pytest.MonkeyPatch.context() as mp:
            dummy_credentials(mp)
            upload_dir(endpoint, visual_store, "berg", "mirror")
            endpoint.make_public("berg")
            client = boto3_client(endpoint)
            client.create_bucket(Bucket="private")
            client.put_object(Bucket="private", Key="mirror/readme.txt", Body=b"private")
        yield endpoint


def test_s3_store_loads_model_and_metadata(s3, vis_paths, monkeypatch, tmp_path):
    dummy_credentials(monkeypatch)
    s3.clear()
    store = open_store("s3://berg/mirror", endpoint_url=s3, cache_dir=tmp_path / "c")
    assert store.model_ids() == [VIS]
    model, info = store.load_model(VIS)
    local_model, _ = open_store(vis_paths[0]).load_model(VIS)
    for k, v in local_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    meta = store.metadata(VIS, "sub-04")
    assert meta["subject_info"]["participant_id"] == "sub-04" and meta["synthetic"] is True
    fp = store.fingerprint(VIS)
    assert fp == open_store(vis_paths[0]).fingerprint(VIS)
    assert all(signed for _, _, signed in s3.requests)  # credentials configured -> signed
    # second store, same cache: nothing downloaded again
    s3.clear()
    store2 = pickle.loads(pickle.dumps(open_store("s3://berg/mirror", endpoint_url=s3, cache_dir=tmp_path / "c")))
    _cache._VERIFIED.clear()  # as in a fresh process: the cached copy is re-verified from disk
    path = store2.checkpoint_file(VIS)
    store2.load_model(VIS)
    store2.metadata(VIS, 4)
    assert path == store.checkpoint_file(VIS)
    assert s3.count("GET", ".pth") == 0 and s3.count("GET", "sub-04.npy") == 0, s3.requests
    assert str(path).startswith(str(tmp_path / "c"))
    assert Path(str(path) + ".sha256").read_text().split()[0] == fp["checkpoint_sha256"]


def test_s3_anonymous_requests_are_unsigned(s3, monkeypatch, tmp_path):
    # no credentials at all: anonymous=None must fall back to unsigned requests
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for anonymous in (True, None):
        s3.clear()
        store = open_store("s3://berg/mirror", endpoint_url=s3, anonymous=anonymous, cache_dir=tmp_path / "c")
        assert store.model_ids() == [VIS]
        assert store.metadata(VIS, 1)["synthetic"] is True
        assert s3.requests and not any(signed for _, _, signed in s3.requests)
    model, info = store.load_model(VIS)
    assert info.width == 16
    # a non-public bucket refuses anonymous requests (listing: this test server; objects: moto's own
    # policy/ACL check), and the errors say where
    with pytest.raises(StoreError, match="private"):
        open_store("s3://private/mirror", endpoint_url=s3, anonymous=True).model_ids()
    fs = open_store("s3://private/mirror", endpoint_url=s3, anonymous=True)._filesystem()[0]
    with pytest.raises(PermissionError):
        fs.cat_file("private/mirror/readme.txt")


def test_storage_options_one_value_for_every_caller(s3, monkeypatch, tmp_path):
    import argparse

    from screening.fs import StorageOptions, add_storage_arguments

    dummy_credentials(monkeypatch)
    # the CLI flags: absent = decide by credentials (None), --anonymous = always unsigned
    parser = argparse.ArgumentParser()
    add_storage_arguments(parser)
    assert StorageOptions.from_args(parser.parse_args([])) == StorageOptions()
    assert StorageOptions.from_args(parser.parse_args(["--anonymous", "--endpoint-url", "http://h"])) == \
        StorageOptions("http://h", True)
    assert StorageOptions.of({"anonymous": False}) == StorageOptions(anonymous=False)
    for bad in ({"anon": True}, "s3"):
        with pytest.raises(InvalidParameterError, match="storage_options"):
            StorageOptions.of(bad)
    with pytest.raises(InvalidParameterError, match="not both"):
        StorageOptions.of(StorageOptions(), anonymous=True)
    # credentials configured: None signs, True does not; the fsspec dict carries the endpoint and the region
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert StorageOptions(s3).to_fsspec("brain-encoding-response-generator") == {
        "anon": False, "client_kwargs": {"region_name": "us-west-2", "endpoint_url": s3}}
    assert StorageOptions(s3, anonymous=True).to_fsspec("berg")["anon"] is True
    # one object through the store: it pickles with it and drives the requests
    s3.clear()
    store = pickle.loads(pickle.dumps(open_store("s3://berg/mirror", storage_options=StorageOptions(s3, True),
                                                 cache_dir=tmp_path / "c")))
    assert store.storage_options == StorageOptions(s3, True) and store.model_ids() == [VIS]
    assert s3.requests and not any(signed for _, _, signed in s3.requests)


def test_s3_endpoint_from_environment(s3, monkeypatch, tmp_path):
    dummy_credentials(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", str(s3))
    store = open_store("s3://berg/mirror", cache_dir=tmp_path / "c")
    assert store.model_ids() == [VIS]
    with pytest.raises(StoreError, match=r"s3://berg/nowhere/.*sub-01\.npy"):
        open_store("s3://berg/nowhere", cache_dir=tmp_path / "c")._local_file(
            get_weights(VIS).metadata_relpath("sub-01"))
    assert open_store("s3://berg/nowhere").model_ids() == []


# ----------------------------------------------------------------------------------------------------
# https (loopback HTTP server)
# ----------------------------------------------------------------------------------------------------
class _Files(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    drop_after: dict = {}  # path -> bytes to send before dropping the connection (once)
    log: list = []

    def log_message(self, *a):
        pass

    def _send(self, body_too: bool):
        self.log.append((self.command, self.path))
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not body_too:
            return
        limit = self.drop_after.pop(self.path, None)
        src = open(data, "rb") if isinstance(data, Path) else io.BytesIO(data)
        with src:
            sent = 0
            while chunk := src.read(1 << 20):
                if limit is not None and sent + len(chunk) > limit:
                    self.wfile.write(chunk[: limit - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)

    def do_GET(self):
        self._send(True)

    def do_HEAD(self):
        self._send(False)


@pytest.fixture(scope="module")
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_https_checkpoint_url_cached_and_verified(http_base, vis_paths, tmp_path):
    w = get_weights(VIS)
    _Files.files[f"/ckpt/{w.filename}"] = vis_paths[1]
    _Files.log.clear()
    url = f"{http_base}/ckpt/{w.filename}"
    store = open_store(url, cache_dir=tmp_path / "c")
    assert store.model_ids() == [VIS]
    path = store.checkpoint_file(VIS)
    want = hashlib.sha256(vis_paths[1].read_bytes()).hexdigest()
    assert store.checkpoint_sha256(VIS) == want and _cache.read_sidecar(path) == want
    meta = store.metadata(VIS, 1)
    assert meta["encoding_models"]["vertex_mapping_all"].shape == (7831,) and len(meta["roi"]) == 360
    assert "noise_ceiling" not in meta and "stimuli" not in meta
    # the URL store cannot know the weights are synthetic: the width-16 test model is refused
    with pytest.raises(ModelLoadError, match="width 16"):
        store.load_model(VIS)
    assert store.fingerprint(VIS)["synthetic"] is False
    gets = sum(1 for m, _ in _Files.log if m == "GET")
    assert gets == 1
    # cache hit in a "fresh process": re-verified from disk, not downloaded
    _cache._VERIFIED.clear()
    assert open_store(url, cache_dir=tmp_path / "c").checkpoint_file(VIS) == path
    assert sum(1 for m, _ in _Files.log if m == "GET") == 1
    # a wrong sidecar (or a corrupted file) is detected and the file fetched again
    Path(str(path) + ".sha256").write_text("0" * 64 + f"  {path.name}\n")
    with pytest.warns(RuntimeWarning, match="does not match"):
        assert open_store(url, cache_dir=tmp_path / "c").checkpoint_file(VIS) == path
    assert sum(1 for m, _ in _Files.log if m == "GET") == 2
    assert _cache.read_sidecar(path) == want


def test_full_length_corrupt_checkpoint_is_not_cached(http_base, vis_paths, tmp_path):
    # No sha256 is published, so a checkpoint of the right length with wrong bytes is caught by the CRC32 of
    # its torch zip members (one flipped byte in the tensor data), and a non-archive .pth is refused too.
    w = get_weights(VIS)
    good = vis_paths[1].read_bytes()
    corrupt = bytearray(good)
    corrupt[len(good) // 2] ^= 0x01
    for i, (payload, match) in enumerate(((bytes(corrupt), "CRC32"), (os.urandom(len(good)), "not a readable"))):
        _Files.files[f"/bad{i}/{w.filename}"] = payload
        url = f"{http_base}/bad{i}/{w.filename}"
        with pytest.raises(IntegrityError, match=match):
            open_store(url, cache_dir=tmp_path / "c").checkpoint_file(VIS)
        final = _cache.entry_path(url, tmp_path / "c")
        assert not final.exists() and _cache.read_sidecar(final) is None and not list(final.parent.glob("*.part"))


def test_interrupted_download_never_leaves_a_file(http_base, tmp_path):
    payload = os.urandom(5 << 20)
    _Files.files["/blob/model.bin"] = payload
    _Files.drop_after["/blob/model.bin"] = 3 << 20
    url = f"{http_base}/blob/model.bin"
    final = _cache.entry_path(url, tmp_path / "c")
    # a dropped connection surfaces as a short body (IntegrityError) or a read error (StoreError)
    with pytest.raises((IntegrityError, StoreError), match=r"model\.bin.*(incomplete|failed)"):
        _cache.fetch(url, cache_dir=tmp_path / "c")
    assert not final.exists() and not list(final.parent.glob("*.part")) and _cache.read_sidecar(final) is None
    # the next call downloads cleanly
    assert _cache.fetch(url, cache_dir=tmp_path / "c") == final
    assert final.read_bytes() == payload
    assert _cache.read_sidecar(final) == hashlib.sha256(payload).hexdigest()


def test_cached_file_corrupted_in_place_is_refetched(http_base, tmp_path):
    payload = os.urandom(1 << 20)
    _Files.files["/blob/other.bin"] = payload
    url = f"{http_base}/blob/other.bin"
    final = _cache.fetch(url, cache_dir=tmp_path / "c")
    corrupt = bytearray(payload)
    corrupt[1000] ^= 0xFF
    tmp = final.with_name("x")
    tmp.write_bytes(bytes(corrupt))
    os.replace(tmp, final)
    with pytest.warns(RuntimeWarning):
        assert _cache.fetch(url, cache_dir=tmp_path / "c").read_bytes() == payload


def test_expected_sha256_enforced(http_base, tmp_path):
    payload = b"abc" * 1000
    _Files.files["/blob/small.bin"] = payload
    url = f"{http_base}/blob/small.bin"
    with pytest.raises(IntegrityError, match="sha256"):
        _cache.fetch(url, cache_dir=tmp_path / "c", expected_sha256="1" * 64)
    assert not _cache.entry_path(url, tmp_path / "c").exists()
    good = hashlib.sha256(payload).hexdigest()
    assert _cache.fetch(url, cache_dir=tmp_path / "c", expected_sha256=good).read_bytes() == payload
    with pytest.raises(StoreError, match="404|not found|Not Found"):
        _cache.fetch(f"{http_base}/blob/missing.bin", cache_dir=tmp_path / "c")


def test_remote_size_change_refetches(http_base, tmp_path):
    _Files.files["/blob/v.bin"] = b"one"
    url = f"{http_base}/blob/v.bin"
    assert _cache.fetch(url, cache_dir=tmp_path / "c").read_bytes() == b"one"
    _Files.files["/blob/v.bin"] = b"second"
    assert _cache.fetch(url, cache_dir=tmp_path / "c").read_bytes() == b"second"
    shutil.rmtree(tmp_path / "c")
