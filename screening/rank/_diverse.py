"""Diverse top-k (``rank --diverse RHO``): a list without near-copies of the same photo.

Web-scale image sets hold crops, re-encodes and resized copies of one photo; an unconstrained top-k fills up with
them. The lists are ranked over a pool of ``DIVERSE_POOL`` x k candidates, then walked in rank order: an image whose
embedding's cosine with an image already listed exceeds RHO is skipped, until k are listed. When the pool runs out
first, the list holds fewer than k images and the rankings' notes name it. An image with no feature vector is listed
without the check, and the notes name it too. The embedding is the
run's image feature (the core output's spatial mean, ``features/``), centred on the screened set's mean embedding
(every post-ReLU feature vector is positive, so raw cosines of unrelated images are high too). A skipped image stays
in the rankings, ``kind`` = ``<list>_skipped``, with ``duplicate_of`` naming the listed image it resembles and ``rank``
its place in the undiversified order: nothing vanishes without a trace. Exact byte duplicates are one ``image_id``
already.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from screening.rank.kinds import KINDS, names

DIVERSE_POOL = 4
DIVERSE_KINDS = tuple(names(diverse=True))


def diversify(rows: pd.DataFrame, vectors: dict, rho: float, k: dict) -> tuple[pd.DataFrame, list]:
    """``(rows, notes)``: each ``DIVERSE_KINDS`` list cut to ``k[kind]`` images none of which is within cosine
    ``rho`` of an earlier one (``vectors``: image_id -> unit centred embedding); skipped rows kept and marked."""
    keep = [rows[~rows.kind.isin(DIVERSE_KINDS)]]
    notes, short, unchecked = [], [], set()
    for (roi, subject, kind), g in rows[rows.kind.isin(DIVERSE_KINDS)].groupby(["roi", "subject", "kind"],
                                                                                  sort=False):
        chosen, mats, skipped, ids = [], [], [], []
        for row in g.sort_values("rank").itertuples(index=False):
            if len(chosen) >= k[kind]:
                break
            v = vectors.get(row.image_id)
            if v is not None and mats:
                sims = np.stack(mats) @ v
                j = int(np.argmax(sims))
                if sims[j] > rho:
                    skipped.append(row._replace(kind=KINDS[kind].skipped().name, duplicate_of=ids[j]))
                    continue
            chosen.append(row._replace(rank=len(chosen) + 1))
            if v is not None:
                mats.append(v)
                ids.append(row.image_id)
            else:
                unchecked.add(row.image_id)
        if len(chosen) < k[kind] and skipped:
            short.append(f"{roi}/{subject}/{kind} ({len(chosen)} of {k[kind]})")
        keep.append(pd.DataFrame(chosen + skipped, columns=rows.columns))
    if short:
        notes.append(f"diverse: {len(short)} list(s) hold fewer than k images, because their {DIVERSE_POOL}x k "
                     f"candidates ran out of images below the similarity bound: {', '.join(short[:20])}"
                     f"{' ...' if len(short) > 20 else ''}")
    if unchecked:
        notes.append(f"diverse: {len(unchecked)} listed image(s) have no feature vector (none in features/, or equal "
                     f"to the mean embedding) and were listed without a near-copy check: "
                     f"{', '.join(sorted(map(str, unchecked))[:10])}{' ...' if len(unchecked) > 10 else ''}")
    return pd.concat(keep, ignore_index=True).astype(rows.dtypes.to_dict()), notes


def unit_vectors(features: pd.DataFrame, mean: np.ndarray) -> dict:
    """image_id -> the embedding minus ``mean``, scaled to unit length (absent where that is 0)."""
    cols = [c for c in features.columns if c != "image_id"]
    x = features[cols].to_numpy(np.float32) - mean
    n = np.linalg.norm(x, axis=1)
    return {i: x[r] / n[r] for r, i in enumerate(features.image_id) if n[r] > 0}
