"""Per-label vertex statistics: n, sum and centred sum of squares of each model vertex's response, per subject.

The one format for everything vertex-resolution (``screening run --vertex-stats``, ``screening contrast``): a folder

    stats/
      meta.json     {"format": FORMAT, "labels": [...], "subjects": ["sub-01", ...], "variant": "all",
                     "model_id": ..., "n_vertices": 57051, "images": total images seen}
      n.npy         (L,) int64          images carrying each label
      sum.npy       (L, S, V) float64   sum of the responses over those images
      m2.npy        (L, S, V) float64   centred sum of squares: sum (y - mean)^2

``V`` is the model's vertex count; column ``v`` is grayordinate ``atlas.variant_vertex_mapping(variant)[v]``.
Partial statistics combine exactly in any order (Chan et al.'s pairwise update, float64), so a run's per-unit
partials merged in unit order give the same maps whether the run was interrupted or not. Memory and disk are
``L x S x V x 16`` bytes plus ``8 L``: 7.3 MB per label over 8 subjects of the ``all`` model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from screening.exceptions import InvalidParameterError

FORMAT = "screening.vertex_stats/1"
BYTES_PER_LABEL_VERTEX = 16   # sum and m2, float64


@dataclass
class VertexStats:
    labels: list
    subjects: list
    n: np.ndarray        # (L,)
    sum: np.ndarray      # (L, S, V)
    m2: np.ndarray       # (L, S, V)
    variant: str = "all"
    model_id: str = ""
    images: int = 0      # images seen (labelled or not)

    @classmethod
    def empty(cls, labels, subjects, n_vertices: int, **meta) -> "VertexStats":
        L, S = len(labels), len(subjects)
        return cls(list(labels), list(subjects), np.zeros(L, np.int64), np.zeros((L, S, n_vertices)),
                   np.zeros((L, S, n_vertices)), **meta)

    @classmethod
    def of_values(cls, values: np.ndarray, memberships, labels, subjects, **meta) -> "VertexStats":
        """Statistics of ``values`` (N, S, V) for ``labels``; ``memberships`` (N, L) 0/1 (an image may carry several
        labels, or none). Two passes over the batch (mean, then centred squares): exact for one batch."""
        m = np.asarray(memberships, dtype=np.float64)
        values = np.asarray(values)
        out = cls.empty(labels, subjects, values.shape[2], images=values.shape[0], **meta)
        out.n = m.sum(axis=0).astype(np.int64)
        flat = values.reshape(values.shape[0], -1).astype(np.float64, copy=False)
        out.sum = (m.T @ flat).reshape(out.sum.shape)
        for li in np.flatnonzero(out.n):
            rows = np.flatnonzero(m[:, li])
            d = flat[rows] - out.sum[li].reshape(-1) / out.n[li]
            out.m2[li] = np.einsum("ij,ij->j", d, d).reshape(out.m2.shape[1:])
        return out

    @property
    def n_vertices(self) -> int:
        return int(self.sum.shape[2])

    def mean(self, label: str) -> np.ndarray:
        """(S, V) mean response of ``label``'s images (NaN without images)."""
        li = self.index(label)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum[li] / self.n[li] if self.n[li] else np.full(self.sum.shape[1:], np.nan)

    def var(self, label: str) -> np.ndarray:
        """(S, V) sample variance (n - 1) of ``label``'s images (NaN with fewer than 2)."""
        li = self.index(label)
        return self.m2[li] / (self.n[li] - 1) if self.n[li] > 1 else np.full(self.m2.shape[1:], np.nan)

    def index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise InvalidParameterError(f"label {label!r} has no vertex statistics; labels: "
                                        f"{', '.join(self.labels[:20])}{' ...' if len(self.labels) > 20 else ''}")\
                from None

    def merge(self, other: "VertexStats") -> "VertexStats":
        """``self`` and ``other`` combined (labels united, in first-seen order): Chan's update per label, float64.
        Updates ``self`` in place unless ``other`` brings new labels (load with ``mmap=False`` to merge into)."""
        if other.subjects != self.subjects or other.n_vertices != self.n_vertices:
            raise ValueError(f"vertex statistics of subjects {other.subjects} x {other.n_vertices} vertices cannot "
                             f"merge into {self.subjects} x {self.n_vertices}")
        labels = self.labels + [lab for lab in other.labels if lab not in self.labels]
        out = self if labels == self.labels else self._grown(labels)
        for j, lab in enumerate(other.labels):
            nb = int(other.n[j])
            if not nb:
                continue
            i = out.labels.index(lab)
            na = int(out.n[i])
            if not na:
                out.n[i], out.sum[i], out.m2[i] = nb, other.sum[j], other.m2[j]
                continue
            delta = other.sum[j] / nb - out.sum[i] / na
            out.m2[i] += other.m2[j] + delta * delta * (na * nb / (na + nb))
            out.sum[i] += other.sum[j]
            out.n[i] = na + nb
        out.images += other.images
        return out

    def _grown(self, labels) -> "VertexStats":
        grown = VertexStats.empty(labels, self.subjects, self.n_vertices, variant=self.variant,
                                  model_id=self.model_id, images=self.images)
        k = len(self.labels)
        grown.n[:k], grown.sum[:k], grown.m2[:k] = self.n, self.sum, self.m2
        return grown

    # -- storage: one folder of .npy files (memory-mapped on read) and a JSON header --------------------------------
    def save(self, folder: str, extra: dict | None = None) -> None:
        """Write atomically: a temporary folder renamed over ``folder``; ``extra`` joins the header (a run records
        the units merged)."""
        import shutil
        import tempfile

        parent = os.path.dirname(os.path.abspath(folder)) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".vertex-stats-", dir=parent)
        for name in ("n", "sum", "m2"):
            np.save(os.path.join(tmp, f"{name}.npy"), getattr(self, name))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"format": FORMAT, "labels": self.labels, "subjects": self.subjects, "variant": self.variant,
                       "model_id": self.model_id, "n_vertices": self.n_vertices, "images": self.images,
                       **(extra or {})}, f)
        old = None
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=".vertex-stats-old-", dir=parent)
            os.rename(folder, os.path.join(old, "x"))
        os.rename(tmp, folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: str, mmap: bool = True) -> "VertexStats":
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise InvalidParameterError(f"{folder!r} holds no vertex statistics (no meta.json): screen with "
                                        f"--vertex-stats LABELS first")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise InvalidParameterError(f"{folder!r}: vertex statistics of format {meta.get('format')!r}; this "
                                        f"version reads {FORMAT!r}")
        arrays = {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r" if mmap else None, allow_pickle=False)
                  for k in ("n", "sum", "m2")}
        return cls(list(meta["labels"]), list(meta["subjects"]), np.asarray(arrays["n"]), arrays["sum"],
                   arrays["m2"], variant=meta.get("variant", "all"), model_id=meta.get("model_id", ""),
                   images=int(meta.get("images", 0)))


def bytes_needed(n_labels: int, n_subjects: int, n_vertices: int) -> int:
    """Memory (and disk) of the statistics of ``n_labels`` labels."""
    return n_labels * (n_subjects * n_vertices * BYTES_PER_LABEL_VERTEX + 8)


# -- computing them: the full readout of a batch's core output, label by label -----------------------------------
VERTEX_CHUNK = 8192   # vertices per readout step at most; fewer for many images: (chunk, N, C) pooled values
POOLED_BYTES = 256 * 2**20   # ... held under this


def vertex_values(heads: dict, subjects, feats, precision: str = "fp32", chunk: int = VERTEX_CHUNK):
    """Yield ``(subject index, vertex slice, float32 (N, chunk) responses)`` of core output ``feats`` (N, C, H, W)
    through each subject's full readout, in vertex chunks so memory stays bounded.

    The readout's maths (``FactorizedReadout``: ``y[n,o] = b[o] + sum_c F[o,c] sum_s x[n,c,s] S^[o,s]``) laid out
    vertex-major: ``S^ (V, HW) @ x (HW, N·C)`` then, per vertex, a (N, C) @ (C,) product as one batched matmul. The
    published order (``(N, C, V)`` pooled values, then a channel einsum) spends 4x the GEMM's time in the einsum on a
    CPU. Under bf16 the two products run in bf16 (as the core does; agreement with fp32 in benchmarks/README.md),
    else in fp32."""
    import torch

    from screening.models.pages import release_file_pages

    n, c = feats.shape[0], feats.shape[1]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = feats.reshape(n * c, -1).to(dtype)                         # (N·C, HW)
    chunk = int(max(256, min(chunk, POOLED_BYTES // max(1, n * c * x.element_size()))))
    for si, s in enumerate(subjects):
        head = heads[s]
        for lo in range(0, head.n_vertices, chunk):
            rows = slice(lo, min(lo + chunk, head.n_vertices))
            with torch.inference_mode():
                s_hat = head.normalized_spatial(rows).flatten(1).to(dtype)   # (v, HW)
                f = head._features[rows].to(dtype)                            # (v, C)
                pooled = (s_hat @ x.T).view(-1, n, c)                         # (v, N, C)
                y = torch.bmm(pooled, f.unsqueeze(2)).squeeze(2).T.float() + head.bias[rows].float()
            yield si, rows, y.numpy()
        # one subject's head resident at a time (240 MB of the memory-mapped checkpoint, not all 1.9 GB); the next
        # batch faults its pages in again from the page cache
        release_file_pages([head._features, head.spatial, head.bias])


def batch_stats(heads: dict, subjects, feats, memberships: np.ndarray, labels, precision: str = "fp32",
                **meta) -> "VertexStats":
    """:class:`VertexStats` of one batch: ``memberships`` (N, L) 0/1 over ``labels``; rows without a label are
    read through nothing (only labelled rows are passed to the readout)."""
    m = np.asarray(memberships, dtype=np.float64)
    keep = np.flatnonzero(m.sum(axis=1) > 0)
    n_vertices = next(iter(heads.values())).n_vertices
    out = VertexStats.empty(labels, subjects, n_vertices, images=int(m.shape[0]), **meta)
    out.n = m.sum(axis=0).astype(np.int64)
    if not keep.size:
        return out
    m = m[keep]
    n = np.maximum(out.n, 1)[:, None]
    for si, rows, y in vertex_values(heads, subjects, feats[keep], precision):
        y = y.astype(np.float64)
        # centred on the batch's own mean over its labelled rows, then per label: sum of squares about the label's
        # mean from two products (float64; the shift keeps the subtraction far from cancelling)
        shift = y.mean(axis=0)
        d = y - shift
        s1 = m.T @ d
        out.sum[:, si, rows] = s1 + out.n[:, None] * shift
        out.m2[:, si, rows] = np.maximum(m.T @ (d * d) - s1 * s1 / n, 0.0)
    return out


def save_partial(fs, path: str, stats: "VertexStats") -> None:
    """One batch's statistics of one unit as a single ``.npz`` (through ``fs``: local or object storage)."""
    import io
    import posixpath

    buf = io.BytesIO()
    np.savez(buf, labels=np.array(stats.labels, dtype=str), subjects=np.array(stats.subjects, dtype=str),
             n=stats.n, sum=stats.sum, m2=stats.m2, images=np.int64(stats.images))
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def load_partial(fs, path: str, **meta) -> "VertexStats":
    import io

    with fs.open(path, "rb") as f:
        d = np.load(io.BytesIO(f.read()), allow_pickle=False)
        return VertexStats([str(x) for x in d["labels"]], [str(x) for x in d["subjects"]], d["n"], d["sum"], d["m2"],
                           images=int(d["images"]), **meta)
