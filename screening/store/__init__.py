"""Model stores: where the MOSAIC CNN8 checkpoint and its BERG metadata come from.

``open_store(location)`` accepts

- a local BERG root directory (the layout in ``docs/store.md``);
- ``s3://bucket[/prefix]`` — a BERG root in S3 (e.g. ``s3://brain-encoding-response-generator``,
  anonymous), or any S3-compatible endpoint (``storage_options=StorageOptions(endpoint_url=...)``); files are
  downloaded into the cache;
- ``https://…/<published checkpoint filename>.pth`` — a checkpoint alone. Its metadata is then
  synthesised from the package atlas (vertex mapping, Glasser groups, ROI grayordinates, subject id);
  there are no noise ceilings and no stimulus lists in that case.

A :class:`ModelStore` is a small picklable value (it travels to Ray actors): it holds the location and
options only, and builds filesystem clients lazily in each process.
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

from screening.exceptions import (CheckpointError, InvalidParameterError, ModelLoadError,
                                  ModelNotFoundError, UnsafePickleError)
from screening.models.registry import PUBLISHED, PUBLISHED_WIDTH, SUBJECTS, EncoderWeights, get_weights
from screening.fs import StorageOptions, filesystem_for, resolve_anonymous
from screening.store.locations import StoreLocation, location_kind

__all__ = ["open_store", "ModelStore", "normalize_subject", "normalize_metadata", "load_metadata_npy",
           "filesystem_for", "StorageOptions"]


def __getattr__(name):  # lazy: the unpickler pulls numpy only when used
    if name == "load_metadata_npy":
        from screening.store._unpickle import load_metadata_npy

        return load_metadata_npy
    raise AttributeError(name)


def normalize_subject(subject) -> str:
    """One subject, in any spelling :func:`screening.validation.parse_subjects` takes, -> ``"sub-0N"``."""
    from screening.validation import parse_subjects

    subjects = parse_subjects(subject)
    if len(subjects) != 1:
        raise InvalidParameterError(f"subject={subject!r} names {len(subjects)} subjects; give exactly one")
    return subjects[0]


def normalize_metadata(meta: dict, *, name: str = "<metadata>", n_vertices: int | None = None) -> dict:
    """Accept ``vertex_mapping_all`` nested under ``encoding_models`` or flat; return the nested form."""
    meta = dict(meta)
    enc = dict(meta.get("encoding_models") or {})
    for key in ("vertex_mapping_all", "glasser_group_id"):
        if key not in enc and key in meta:
            enc[key] = meta.pop(key)
    if "vertex_mapping_all" not in enc:
        raise ModelLoadError(f"{name}: metadata has no vertex_mapping_all (looked under 'encoding_models' and "
                             f"at the top level); keys: {sorted(meta)}")
    if n_vertices is not None:
        for key in ("vertex_mapping_all", "glasser_group_id"):
            if key in enc and len(enc[key]) != n_vertices:
                raise ModelLoadError(f"{name}: {key} has {len(enc[key])} entries; this model has {n_vertices} "
                                     "vertices")
    meta["encoding_models"] = enc
    return meta


class ModelStore:
    """A BERG model store (local directory, ``s3://`` root, or one checkpoint URL).

    Build with :func:`open_store`. Picklable; clients are rebuilt lazily after unpickling.
    """

    def __init__(self, location: str, *, storage_options: StorageOptions | None = None,
                 cache_dir: str | os.PathLike | None = None):
        self.location = str(location)
        self.storage_options = StorageOptions.of(storage_options)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        #: what depends on where the store is (screening.store.locations)
        self.where: StoreLocation = location_kind(self.location)
        self._url_model_id = None
        self.where.prepare(self)
        self._reset()

    @property
    def kind(self) -> str:
        """``"local"``, ``"s3"`` or ``"url"``: the name of the location kind."""
        return self.where.name

    # -- pickling: configuration only ------------------------------------------------------------------
    def _reset(self):
        self._fs = None
        self._root = None
        self._lock = threading.Lock()
        self._meta: dict[tuple, dict] = {}
        self._synthetic: dict[str, dict | None] = {}

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("location", "storage_options", "cache_dir", "where",
                                              "_url_model_id")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __repr__(self):
        return f"ModelStore({self.location!r}, kind={self.kind!r})"

    # -- filesystem ------------------------------------------------------------------------------------
    def _filesystem(self):
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    self._fs, self._root = filesystem_for(self.location, self.storage_options)
        return self._fs, self._root

    def _display(self, rel: str) -> str:
        return self.where.display(self, rel)

    def _local_file(self, rel: str, *, expected_sha256: str | None = None, progress: bool | None = None) -> Path:
        """A store-relative file as a local path: as-is for local stores, cached for remote ones."""
        return self.where.local_file(self, rel, expected_sha256=expected_sha256, progress=progress)

    def access_hint(self) -> str:
        """How requests to the store are signed (named when a remote file is missing)."""
        return _access_hint(self)

    # -- contents --------------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        """Known model ids whose folder exists in this store, sorted."""
        return self.where.model_ids(self)

    def weights(self, model_id: str) -> EncoderWeights:
        """The registry record of ``model_id``; raises if unknown or absent from this store."""
        try:
            w = get_weights(model_id)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"Unknown model_id {model_id!r}; valid model ids: {', '.join(sorted(PUBLISHED))}; "
                f"present in {self.location}: {', '.join(self.model_ids()) or 'none'}") from None
        self.where.check_holds(self, model_id, w)
        return w

    def checkpoint_file(self, model_id: str, *, progress: bool | None = None) -> Path:
        """Local path of the checkpoint (remote files are downloaded into the cache and verified)."""
        return self.where.checkpoint_file(self, self.weights(model_id), progress=progress)

    def checkpoint_sha256(self, model_id: str) -> str:
        """sha256 of the checkpoint; computed once, then read from a sidecar / memo."""
        from screening.store._cache import file_sha256, read_sidecar

        path = self.checkpoint_file(model_id)
        if self.where.downloads:
            side = read_sidecar(path)
            if side:
                return side
        return file_sha256(path, cache_dir=self.cache_dir)

    def _synthetic_info(self, model_id: str) -> dict | None:
        """``synthetic_params`` (plus the note) when the store's metadata says synthetic, else None."""
        if model_id not in self._synthetic:
            if not self.where.has_metadata_files:
                self._synthetic[model_id] = None
            else:
                meta = self._metadata(model_id, SUBJECTS[0])
                if meta.get("synthetic") is True:
                    info = dict(meta.get("synthetic_params") or {})
                    info["note"] = meta.get("note", "")
                    self._synthetic[model_id] = info
                else:
                    self._synthetic[model_id] = None
        return self._synthetic[model_id]

    def load_model(self, model_id: str):
        """Load the checkpoint strictly and build the model.

        Returns
        -------
        (CNN8Multihead, CheckpointInfo)

        Raises
        ------
        ModelNotFoundError, StoreError, CheckpointError (a ModelLoadError), ModelLoadError
            A width other than 384 is accepted only for stores whose metadata says ``synthetic``.
        """
        from screening.models.registry import load_checkpoint
        from screening.models.encoder import CNN8Multihead

        w = self.weights(model_id)
        path = self.checkpoint_file(model_id)
        try:
            sd, info = load_checkpoint(path, expect_n_vertices=w.n_vertices)
        except CheckpointError as e:
            raise CheckpointError(f"{self._describe(w)}: {e}") from None
        synthetic = self._synthetic_info(model_id)
        if info.width != PUBLISHED_WIDTH and synthetic is None:
            raise ModelLoadError(
                f"{self._describe(w)}: checkpoint has width {info.width}, but {model_id} is published at width "
                f"{PUBLISHED_WIDTH}; only stores whose metadata says synthetic may hold reduced-width models")
        if synthetic is not None and synthetic.get("width") not in (None, info.width):
            raise ModelLoadError(f"{self._describe(w)}: metadata says width {synthetic.get('width')}, checkpoint "
                                 f"has {info.width}")
        try:
            model = CNN8Multihead.from_state_dict(sd, info)
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(f"{self._describe(w)}: could not build the model: {e}") from None
        return model, info

    def _describe(self, w: EncoderWeights) -> str:
        return self.where.describe(self, w)

    def _metadata(self, model_id: str, subject: str) -> dict:
        key = (model_id, subject)
        if key not in self._meta:
            w = self.weights(model_id)
            if not self.where.has_metadata_files:
                meta = _atlas_metadata(w, subject)
            else:
                from screening.store._unpickle import load_metadata_npy

                rel = w.metadata_relpath(subject)
                path = self._local_file(rel)
                with open(path, "rb") as f:
                    try:
                        meta = load_metadata_npy(f, name=self._display(rel))
                    except UnsafePickleError as e:
                        raise UnsafePickleError(f"{self._display(rel)}: {e}") from None
                meta = normalize_metadata(meta, name=self._display(rel), n_vertices=w.n_vertices)
            self._meta[key] = meta
        return self._meta[key]

    def metadata(self, model_id: str, subject) -> dict:
        """One subject's metadata dict (BERG schema, ``encoding_models`` nesting); a fresh copy."""
        return copy.deepcopy(self._metadata(model_id, normalize_subject(subject)))

    def fingerprint(self, model_id: str) -> dict:
        """``{model_id, variant, checkpoint_sha256, synthetic, width}`` — what a run manifest records."""
        w = self.weights(model_id)
        synthetic = self._synthetic_info(model_id)
        width = PUBLISHED_WIDTH
        if synthetic is not None and synthetic.get("width") is not None:
            width = int(synthetic["width"])
        return {"model_id": model_id, "variant": w.variant, "checkpoint_sha256": self.checkpoint_sha256(model_id),
                "synthetic": synthetic is not None, "width": width}


def _access_hint(store: ModelStore) -> str:
    return "anonymous access" if resolve_anonymous(store.storage_options.anonymous) else "signed with the configured credentials"


def _atlas_metadata(w: EncoderWeights, subject: str) -> dict:
    """Metadata for a bare checkpoint URL: the atlas part only (no noise ceilings, no stimuli)."""
    from screening import atlas

    return {
        **atlas.metadata_arrays(w.variant),
        "subject_info": {"participant_id": subject},
        "note": "synthesised by screening from its atlas: the checkpoint was opened from a URL without a BERG "
                "metadata file, so there are no noise ceilings and no stimulus lists",
    }


def open_store(location: str | os.PathLike, *, storage_options: StorageOptions | dict | None = None,
               endpoint_url: str | None = None, anonymous: bool | None = None,
               cache_dir: str | os.PathLike | None = None) -> ModelStore:
    """Open a model store.

    Parameters
    ----------
    location : str or path-like
        Local BERG root, ``s3://bucket[/prefix]`` BERG root, or ``https://…/<published filename>.pth``.
    storage_options : StorageOptions or dict, optional
        S3 only: endpoint and credentials mode (:mod:`screening.fs`). Default: the environment's endpoint;
        signed when credentials are configured, else unsigned.
    endpoint_url, anonymous
        The two fields of ``storage_options``, given separately (the BERG API's keywords).
    cache_dir : path, optional
        Download cache; default ``$SCREENING_CACHE_DIR`` or ``~/.cache/screening``.

    Returns
    -------
    ModelStore

    Raises
    ------
    StoreError
        A local location that is not a directory.
    InvalidParameterError
        A URL that does not name a published checkpoint file, or an unsupported scheme.
    """
    loc = os.fspath(location)
    location_kind(loc).check_openable(loc)
    options = StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous)
    store = ModelStore(loc, storage_options=options, cache_dir=cache_dir)
    store.where.check_opened(store)
    return store
