"""The kinds of model-store location, one object each: a local BERG root, an ``s3://`` BERG root, one checkpoint
URL. A :class:`~screening.store.ModelStore` asks its location kind what differs between them (where files are read
from, which models it holds, where metadata comes from) instead of comparing a kind name.

The kinds hold no state, so a store pickles with its kind (Ray ships stores to actors)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from screening.exceptions import InvalidParameterError, ModelNotFoundError, StoreError
from screening.fs import is_remote, join
from screening.models.registry import PUBLISHED


class StoreLocation:
    """What a store does that depends on where it is; a subclass per kind, named ``name`` in ``ModelStore.kind``."""

    name = ""
    #: files are downloaded into the cache (which keeps each one's sha256 beside it)
    downloads = True
    #: the store holds BERG metadata files (a bare checkpoint URL has its metadata made from the atlas)
    has_metadata_files = True

    def claims(self, location: str) -> bool:
        raise NotImplementedError

    def check_openable(self, location: str) -> None:
        """Refuse a location of this kind ``open_store`` cannot open (before anything is built)."""

    def prepare(self, store) -> None:
        """Normalise ``store.location`` when the store is built."""

    def check_opened(self, store) -> None:
        """Refuse a built store that cannot work (``open_store`` only)."""

    def display(self, store, rel: str) -> str:
        return join(store.location, rel)

    def local_file(self, store, rel: str, *, expected_sha256=None, progress=None) -> Path:
        """A store-relative file as a local path: downloaded into the cache and verified."""
        from screening.store import _cache

        fs, root = store._filesystem()
        path = join(root, rel)
        url = self.display(store, rel)
        try:
            return _cache.fetch(url, cache_dir=store.cache_dir, expected_sha256=expected_sha256,
                                source=_cache.fs_source(url, fs, path), progress=progress)
        except StoreError as e:
            if not exists(fs, path):
                raise StoreError(f"model store file not found: {url} ({store.access_hint()})") from None
            raise e from None

    def model_ids(self, store) -> list[str]:
        fs, root = store._filesystem()
        return sorted(w.model_id for w in PUBLISHED.values() if exists(fs, join(root, w.store_dir)))

    def check_holds(self, store, model_id: str, w) -> None:
        """Refuse a known ``model_id`` this store does not hold."""
        if model_id not in store.model_ids():
            raise ModelNotFoundError(
                f"model_id {model_id!r} is not in the store {store.location} (looked for "
                f"{self.display(store, w.store_dir)}); present: {', '.join(store.model_ids()) or 'none'}")

    def checkpoint_file(self, store, w, *, progress=None) -> Path:
        return store._local_file(w.checkpoint_relpath, progress=progress)

    def describe(self, store, w) -> str:
        """How error messages name the model's checkpoint."""
        return self.display(store, w.checkpoint_relpath)


class LocalLocation(StoreLocation):
    """A BERG root on this machine (or a shared filesystem): files are read where they are."""

    name = "local"
    downloads = False

    def claims(self, location: str) -> bool:
        return not is_remote(location)

    def prepare(self, store) -> None:
        store.location = os.path.abspath(os.path.expanduser(store.location.removeprefix("file://")))

    def check_opened(self, store) -> None:
        if not Path(store.location).is_dir():
            raise StoreError(f"model store directory not found: {store.location}")

    def display(self, store, rel: str) -> str:
        return os.path.join(store.location, rel)

    def local_file(self, store, rel: str, *, expected_sha256=None, progress=None) -> Path:
        p = Path(store.location) / rel
        if not p.is_file():
            raise StoreError(f"model store file not found: {p}")
        return p

    def model_ids(self, store) -> list[str]:
        return sorted(w.model_id for w in PUBLISHED.values() if (Path(store.location) / w.store_dir).is_dir())


class S3Location(StoreLocation):
    """A BERG root in object storage (``s3://bucket[/prefix]``): files are downloaded into the cache."""

    name = "s3"

    def claims(self, location: str) -> bool:
        return is_remote(location)

    def check_openable(self, location: str) -> None:
        if urlparse(location).scheme.lower() not in ("s3", "s3a"):
            raise InvalidParameterError(
                f"unsupported store location {location!r}; valid forms: a local directory, s3://bucket[/prefix], "
                "https://…/<checkpoint>.pth")


class UrlLocation(StoreLocation):
    """One published checkpoint at an ``http(s)`` URL: the store holds that model only, its metadata made from the
    package atlas."""

    name = "url"
    has_metadata_files = False

    def claims(self, location: str) -> bool:
        return urlparse(location).scheme.lower() in ("http", "https")

    def check_openable(self, location: str) -> None:
        from screening.store._cache import check_http_url

        check_http_url(location)

    def prepare(self, store) -> None:
        name = os.path.basename(urlparse(store.location).path)
        ids = [w.model_id for w in PUBLISHED.values() if w.filename == name]
        if not ids:
            raise InvalidParameterError(
                f"checkpoint URL {store.location!r} does not end in a published checkpoint filename; valid "
                f"filenames: {', '.join(sorted(w.filename for w in PUBLISHED.values()))}")
        store._url_model_id = ids[0]

    def model_ids(self, store) -> list[str]:
        return [store._url_model_id]

    def check_holds(self, store, model_id: str, w) -> None:
        if model_id != store._url_model_id:
            raise ModelNotFoundError(f"{store.location} is the checkpoint of {store._url_model_id!r}, "
                                     f"not of {model_id!r}")

    def checkpoint_file(self, store, w, *, progress=None) -> Path:
        from screening.store import _cache

        return _cache.fetch(store.location, cache_dir=store.cache_dir, progress=progress)

    def describe(self, store, w) -> str:
        return store.location


#: Every location kind, in the order they are tried (a URL is remote too, so it comes before S3).
LOCATIONS: tuple[StoreLocation, ...] = (UrlLocation(), S3Location(), LocalLocation())


def location_kind(location: str) -> StoreLocation:
    """The kind of a store location (a path or URI)."""
    return next(k for k in LOCATIONS if k.claims(location))


def exists(fs, path: str) -> bool:
    """``fs.exists(path)``, any listing failure raised as a StoreError naming the path."""
    try:
        return bool(fs.exists(path))
    except (OSError, ValueError) as e:
        raise StoreError(f"could not list {path}: {type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 — botocore raises its own types (NoCredentialsError, ...)
        raise StoreError(f"could not list {path}: {type(e).__name__}: {e}") from None
