"""The report's data access: the run's manifest, committed responses and errors (through ``RunOutputs``), its
rankings (ranked now if missing), the chosen subject and ROIs, and the shown images' bytes and files."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions
from screening.rank.kinds import CONSENSUS_SUBJECT, TOPK, RankingKind, names, shown_in_roi_sections
from screening.report import html as H
from screening.report.contact_sheet import fetch_image_records, image_extension, write_thumbnail
from screening.report.describe import short_name
from screening.validation import parse_subjects


#: ROIs shown when none are asked for (those present in the rankings, in this order).
DEFAULT_ROIS = ("FFC", "PHA1-3", "faces", "V1", "early_visual", "group_01")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def read_errors(run: Path, n: int):
    try:
        dataset = run_outputs(run).dataset("errors")
        if dataset is None:
            return None, 0
        return dataset.head(n).to_pandas(), dataset.count_rows()
    except Exception:  # noqa: BLE001 - an empty/odd errors folder must not stop the report
        return None, 0


def roi_column_values(responses: ds.Dataset, roi: str, subject: str, manifest: dict, members=None) -> np.ndarray:
    """All finite values of one ROI for one subject (streamed; only the member columns are read).

    ``members`` are the columns rank averaged for this ROI (rankings metadata); without them the name is
    resolved again against the table.
    """
    from screening.rank import roi_values

    return roi_values(responses, roi, subject, manifest=manifest, members=members)


# -- input checks and the run's tables ------------------------------------------------------------------------
def check_run_dir(run_dir, *, top_k, bottom_k) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise InvalidParameterError(f"run_dir={str(run_dir)!r} is not a directory")
    for name, k in (("top_k", top_k), ("bottom_k", bottom_k)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
            raise InvalidParameterError(f"{name} must be an integer >= 0 or None; got {k!r}")
    return run


@dataclass
class Inputs:
    """What the page is made of: the run's manifest, its rankings and their metadata, the chosen subject and ROIs."""

    run: Path
    out: Path
    manifest: dict
    rankings: pd.DataFrame
    meta: dict
    sets: pd.DataFrame | None
    subject: str
    rois: list
    responses: ds.Dataset | None
    notes: list = field(default_factory=list)
    enrichment: pd.DataFrame | None = None    # rank --labels: label enrichment of the ranked lists
    label_means: pd.DataFrame | None = None   # and each ROI's response per label

    @property
    def cfg(self) -> dict:
        return self.manifest.get("config") or {}

    @property
    def model(self) -> dict:
        return self.manifest.get("model") or {}

    @property
    def synthetic(self) -> bool:
        return bool(self.model.get("synthetic", False))

    @property
    def members(self) -> dict:
        return self.meta.get("members") or {}

    @property
    def n_images(self):
        return self.meta.get("n_images") or (self.manifest.get("counts") or {}).get("images")

    def ranked(self, kind: RankingKind, roi: str, subject: str | None = None, k=None) -> pd.DataFrame:
        """One list, best first: ``kind``'s rows of ``roi`` for ``subject`` (default: the kind's own subject, else
        the subject shown)."""
        r = kind.rows(self.rankings)
        subject = subject or kind.subject or self.subject
        r = r[(r.roi == roi) & (r.subject == subject)].sort_values("rank")
        return r.head(k) if k is not None else r


def read_inputs(run: Path, *, rois, subject, say) -> Inputs:
    from screening.rank import (ENRICHMENT_FILE, LABEL_MEANS_FILE, SETS_FILE, read_rankings,
                                read_rankings_metadata)

    outputs = run_outputs(run)
    manifest = outputs.manifest() or {}
    notes = [] if manifest else ["no manifest.json in the run folder"]
    responses = outputs.dataset("responses")
    if not (run / "rankings").exists():
        _rank_now(run, manifest, say)
    rankings = read_rankings(str(run / "rankings"))
    try:
        meta = read_rankings_metadata(str(run / "rankings"))
    except InvalidParameterError:
        meta = {}
    notes += [f"ranking: {n}" for n in meta.get("notes") or []]
    sets_path = run / "rankings" / SETS_FILE
    enrichment, label_means = (_optional_table(run / "rankings" / name) for name in (ENRICHMENT_FILE,
                                                                                    LABEL_MEANS_FILE))
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    return Inputs(run=run, out=out, manifest=manifest, rankings=rankings, meta=meta,
                   sets=pd.read_parquet(sets_path) if sets_path.exists() else None,
                   subject=_choose_subject(rankings, subject), rois=_choose_rois(rankings, rois),
                   responses=responses, notes=notes, enrichment=enrichment, label_means=label_means)


def _optional_table(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _rank_now(run: Path, manifest: dict, say) -> None:
    from screening.rank import rank

    if not (run / "responses").exists():
        raise InvalidParameterError(f"{run} has neither rankings/ nor responses/ to rank")
    say("ranking (rankings/ missing)")
    with warnings.catch_warnings():  # the notes land in the rankings metadata, shown on the page
        warnings.simplefilter("ignore", category=ranking_note())
        rank(str(run / "responses"), str(run / "rankings"), manifest=manifest)


def run_outputs(run: Path):
    """The run's committed outputs (only the parts that markers list; a plain folder of tables is read whole)."""
    from screening.pipeline.outputs import RunOutputs  # lazy: the pipeline package pulls in Ray

    return RunOutputs(str(run))


def _choose_subject(rankings: pd.DataFrame, subject):
    subjects = list(dict.fromkeys(rankings.subject))
    if subject is None:
        return "mean" if "mean" in subjects else next((s for s in subjects if s != CONSENSUS_SUBJECT), None)
    if subject not in subjects and subject not in ("mean", CONSENSUS_SUBJECT):
        named = parse_subjects(subject, name="subject")  # any spelling of one subject: 1, "01", "subj01", ...
        if len(named) != 1:
            raise InvalidParameterError(f"subject={subject!r} names {len(named)} subjects; the page shows one")
        subject = named[0]
    if subject not in subjects:
        raise InvalidParameterError(f"subject={subject!r} is not in the rankings; valid: {subjects}")
    return subject


def _choose_rois(rankings: pd.DataFrame, rois) -> list:
    ranked_rois = list(dict.fromkeys(TOPK.rows(rankings).roi))
    if rois is None:
        return [r for r in DEFAULT_ROIS if r in ranked_rois] or ranked_rois[:4]
    rois = [rois] if isinstance(rois, str) else list(rois)
    unknown = [r for r in rois if r not in ranked_rois]
    if unknown:
        raise InvalidParameterError(
            f"ROI(s) {unknown} are not in the rankings; valid: {ranked_rois[:20]}"
            f"{' ...' if len(ranked_rois) > 20 else ''}")
    return rois


# -- image fetching ---------------------------------------------------------------------------------------------
@dataclass
class Images:
    """The shown images: bytes and source per id (``records``), their files beside the page (``files``)."""

    records: dict
    files: dict
    thumb_ids: set
    table_k: int

    def name_of(self, i):
        return short_name(self.source_of(i))

    def source_of(self, i):
        return (self.records.get(str(i)) or {}).get("source")

    def bytes_of(self, i):
        return (self.records.get(str(i)) or {}).get("bytes")

    def file_link(self, row):
        i = str(row["image_id"])
        return (self.files.get(i, {}).get("full"), self.source_of(i))

    def with_names(self, frame):
        frame = frame.copy()
        frame["file"] = [self.name_of(i) or "" for i in frame.image_id]
        return frame

    def table(self, frame, columns):
        return H.table(self.with_names(frame), columns, links={"file": self.file_link})

    def cells(self, frame):
        return [{"rank": int(r.rank), "image_id": str(r.image_id), "score": signed(r.response), "z": signed(r.z),
                 "p": f"{r.p_null:.2g}" if np.isfinite(r.p_null) else "", "name": self.name_of(r.image_id),
                 "source": self.source_of(r.image_id), "thumb": self.files[str(r.image_id)]["thumb"],
                 "full": self.files[str(r.image_id)].get("full")}
                for r in frame.itertuples(index=False)]


def fetch_shown_images(inputs: Inputs, plans: list) -> Images:
    """Bytes of every thumbnail's image; only id + source of the images named in the tables."""
    thumb_ids = set()
    for p in plans:
        thumb_ids |= set(p["top"].image_id) | set(p["bottom"].image_id)
    table_k = max([len(p["top"]) for p in plans] + [1])
    con = contrast_rows(inputs)
    table_ids = set(con[con["rank"] <= table_k].image_id)
    for roi in inputs.rois:
        for kind in shown_in_roi_sections():
            table_ids |= set(inputs.ranked(kind, roi, k=table_k).image_id)
    records, shards_note = _image_records(inputs.manifest, thumb_ids, table_ids - thumb_ids)
    missing = (thumb_ids | table_ids) - set(records)
    if missing:  # images read straight from files or tars: the run's sources table says where each one is
        found = _records_from_sources(inputs.run, inputs.manifest, missing, thumb_ids)
        records.update(found)
        if found and missing <= set(found):
            shards_note = None
    if shards_note:
        inputs.notes.append(shards_note)
    return Images(records, _write_image_files(inputs.out, records, thumb_ids), thumb_ids, table_k)


def contrast_rows(inputs: Inputs) -> pd.DataFrame:
    r = inputs.rankings
    return r[r.kind.isin(names(contrast=True)) & (r.subject == inputs.subject)]


def ranking_note():
    from screening.rank import RankingNote

    return RankingNote


def n_finite(values, sets, roi, subject, n_images):
    """Images with a finite response for this ROI and subject: the histogram's values, else the set table."""
    if values is not None:
        return int(values.size)
    if sets is not None:
        row = TOPK.rows(sets)
        row = row[(row.roi == roi) & (row.subject == subject)]
        if len(row):
            return int(row.n_images.iloc[0])
    return int(n_images) if n_images is not None else None


def vertex_counts(manifest, members, subject) -> dict:
    """Column -> model vertex count for ``subject`` (manifest first, then the atlas)."""
    from screening import atlas

    out = {}
    counts = atlas.roi_grayordinates()
    for c in members or []:
        per = ((manifest.get("rois") or {}).get(c) or {}).get("n_vertices") or {}
        if subject in per:
            out[c] = float(per[subject])
        elif c in counts:
            out[c] = float(len(counts[c]))
    return out


def storage_options(cfg: dict) -> StorageOptions:
    """The S3 options the run was made with (its manifest's config)."""
    return StorageOptions(endpoint_url=cfg.get("endpoint_url"), anonymous=cfg.get("anonymous"))


def _image_shards(manifest: dict):
    """Where the run's images are: the manifest's list of input shards, else ``config.images``."""
    cfg = manifest.get("config") or {}
    listed = [s.get("path") for s in manifest.get("shards") or [] if isinstance(s, dict) and s.get("path")]
    out = []
    if listed:
        out.append(listed)
    if cfg.get("images"):
        out.append(str(cfg["images"]))
    return out


def _image_records(manifest: dict, thumb_ids, name_ids):
    """(``{id: {"bytes", "source"}}``, note or None): bytes for thumbnails, source only for table rows."""
    cfg = manifest.get("config") or {}
    kw = {"id_column": cfg.get("id_column") or "image_id", "image_column": cfg.get("image_column") or "image",
          "storage_options": storage_options(cfg)}
    if cfg.get("id_derived"):
        return {}, ("the image shards have no image_id column (the run derived the ids from the bytes), so images "
                    "cannot be looked up by id: thumbnails are placeholders and file names are missing")
    tried = []
    for where in _image_shards(manifest):
        try:
            recs = fetch_image_records(where, thumb_ids, **kw)
            recs.update({i: r for i, r in fetch_image_records(where, name_ids, with_bytes=False, **kw).items()
                         if i not in recs})
            return recs, None
        except Exception as exc:  # noqa: BLE001 - moved shards: try the next location, then say so
            tried.append(f"{where if isinstance(where, str) else f'{len(where)} shard(s) of the manifest'}: {exc}")
    if not tried:
        return {}, "the manifest names no image shards (config.images); thumbnails are placeholders"
    return {}, "image shards not found (" + "; ".join(tried) + "); thumbnails are placeholders"


def _records_from_sources(run: Path, manifest: dict, ids, thumb_ids) -> dict:
    """``{id: {"source", "bytes"}}`` from the run's committed ``sources`` parts; bytes (thumbnails only) are read back
    by the input kind that made the row (:func:`screening.sources.read_image`, with the run's recorded options): a
    file, an ``s3://`` object, a ``tar://member::archive`` URL, an HDF5 ``FILE#index``. A source that is gone keeps
    its name and gets a placeholder."""
    dataset = run_outputs(run).dataset("sources")
    if dataset is None:
        return {}
    import pyarrow.compute as pc

    from screening.sources import read_image

    table = dataset.to_table(filter=pc.field("image_id").isin(sorted(ids)))
    cfg = manifest.get("config") or {}
    options = storage_options(cfg)
    out = {}
    for image_id, source in zip(table.column("image_id").to_pylist(), table.column("source").to_pylist()):
        rec = out.setdefault(image_id, {"source": source})
        if image_id in thumb_ids and rec.get("bytes") is None:   # a source that is gone keeps its name
            rec["bytes"] = read_image(source, options, cfg)
    return out


def _write_image_files(out: Path, records: dict, ids) -> dict:
    """``thumbs/<id>.jpg`` for every shown image and ``images/<id>.<ext>`` (the original bytes) where known."""
    (out / "thumbs").mkdir(exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    files = {}
    for i in sorted(ids):
        stem = slug(i)
        data = (records.get(i) or {}).get("bytes")
        write_thumbnail(data, out / "thumbs" / f"{stem}.jpg")
        f = {"thumb": f"thumbs/{stem}.jpg"}
        if data is not None:
            name = f"images/{stem}.{image_extension(data)}"
            (out / name).write_bytes(data)
            f["full"] = name
        files[i] = f
    return files


def signed(x) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:+.3g}"
