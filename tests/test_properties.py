"""Property tests (hypothesis) where hand-picked cases leave room: the exact ROI collapse for any vertex sets, and
any spelling of an ROI name through the one grammar (screening.rois.expand_roi) and its three consumers."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from screening import atlas, rois
from screening.exceptions import InvalidParameterError
from screening.models.registry import SUBJECTS
from screening.models.encoder import CNN8Multihead, Normalize, collapse_heads
from screening.rois import DEFAULT_COMPOSITES

# CI draws the same examples every time (a run that lands does not depend on a lucky draw); elsewhere new ones
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=bool(os.environ.get("SCREENING_CI")))
SUBS = list(SUBJECTS[:2])
V = atlas.N_VERTICES_VISUAL


# -- the collapse -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated_outputs():
    """Calibrated width-16 visual model (every channel alive), its core output and full vertex outputs on 4 images."""
    from screening.store.synthetic import synthetic_state_dict

    from tests.test_models import _blobs

    model = CNN8Multihead.from_state_dict(synthetic_state_dict("visual", seed=0, width=16))
    with torch.no_grad():
        feats = model.core(Normalize()(_blobs(4, seed=2)))
        full = {s: model.head(s)(feats).double() for s in SUBS}
    return model, feats.flatten(1), full


# overlapping sets on purpose: half the draws come from the first 40 vertices, so sets share atoms
_vertex_set = st.lists(st.one_of(st.integers(0, V - 1), st.integers(0, 40)), min_size=1, max_size=60, unique=True)
_roi = st.one_of(_vertex_set.map(np.array),
                 st.fixed_dictionaries({s: _vertex_set.map(np.array) for s in SUBS}))  # reliability-filtered style
_roi_sets = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), _roi, min_size=1, max_size=5)


@FAST
@given(sets=_roi_sets)
def test_collapse_of_any_vertex_sets_is_the_mean_of_the_full_outputs(calibrated_outputs, sets):
    model, feats, full = calibrated_outputs
    w, b = collapse_heads(model, SUBS, sets)
    got = (feats @ w.T + b).double().view(feats.shape[0], len(SUBS), len(sets))
    for si, s in enumerate(SUBS):
        for ri, v in enumerate(sets.values()):
            cols = torch.as_tensor(v[s] if isinstance(v, dict) else v)
            want = full[s][:, cols].mean(1)
            # relative to the mean's own spread across images (errors in any channel or vertex show), plus float32
            # rounding of a 10,816-term dot product (about 40 ulps at the values' size: a draw once reached 1.07e-5
            # against a bound of 1e-6 of 2.17)
            tol = 1e-4 * want.std() + 1e-5 * want.abs().max()
            assert (got[:, si, ri] - want).abs().max() <= tol, (s, ri, cols.tolist()[:5])


# -- ROI names ----------------------------------------------------------------------------------------
ACCEPTED = rois.accepted_names("visual", DEFAULT_COMPOSITES)
MAPPING = atlas.variant_vertex_mapping("visual")


@pytest.fixture(scope="module")
def rank_resolver():
    """``screening rank``'s resolver over a responses table of the visual variant (its areas, then its groups)."""
    from screening.rank._rois import RoiResolver

    return RoiResolver(rois.default_roi_names("visual"), ["sub-01"])


def _atom_grayordinates(atom: str) -> set:
    g = atlas.roi_grayordinates().get(atom)
    if g is None:
        g = atlas.vertex_mapping_all()[atlas.glasser_group_id() == int(atom[len("group_"):])]
    return set(np.intersect1d(g, MAPPING).tolist())


def _same_everywhere(name: str, rank_resolver) -> None:
    """The API/pipeline columns, rank's weighted members and the flatmap outline are one vertex set."""
    from screening.report.flatmap import roi_grayordinate_mask

    want = set(MAPPING[rois.resolve_roi(name, "visual", DEFAULT_COMPOSITES)].tolist())
    target = rank_resolver.resolve(name)
    assert set().union(*(_atom_grayordinates(m) for m in target.members)) == want
    # members are disjoint, so the vertex-weighted mean of the columns is the plain mean over the union
    assert target.weights["sub-01"].sum() == len(want) or target.members == (name,)
    assert set(np.intersect1d(np.flatnonzero(roi_grayordinate_mask(name)), MAPPING).tolist()) == want


@FAST
@given(name=st.sampled_from(ACCEPTED))
def test_every_accepted_name_is_one_vertex_set_everywhere(name, rank_resolver):
    _same_everywhere(name, rank_resolver)


def _respell(name: str, data) -> str:
    op = data.draw(st.sampled_from(["same", "lower", "upper", "swapcase", "drop", "insert", "prefix", "unprefix",
                                    "dash", "space"]))
    i = data.draw(st.integers(0, len(name)))
    return {"same": name, "lower": name.lower(), "upper": name.upper(), "swapcase": name.swapcase(),
            "drop": name[:i] + name[i + 1:], "insert": name[:i] + data.draw(st.sampled_from("_1xV")) + name[i:],
            "prefix": data.draw(st.sampled_from(["L_", "R_"])) + name, "unprefix": name[2:] if name[1:2] == "_" else name,
            "dash": name.replace("_", "-"), "space": name + " "}[op]


@FAST
@given(data=st.data())
def test_any_spelling_is_resolved_alike_or_refused_with_working_suggestions(data, rank_resolver):
    name = data.draw(st.sampled_from(ACCEPTED))
    spelling = _respell(name, data)
    try:
        rois.resolve_roi(spelling, "visual", DEFAULT_COMPOSITES)
    except InvalidParameterError as e:
        assert repr(spelling) in str(e) and str(pickle.loads(pickle.dumps(e))) == str(e)
        hits = rois.suggest_names(spelling, ACCEPTED)
        for h in hits:  # a suggestion always works where it is offered
            rois.resolve_roi(h, "visual", DEFAULT_COMPOSITES)
        if spelling.lower() == name.lower():
            assert hits[:1] == [name]  # another case of a valid name: that name first
        with pytest.raises(InvalidParameterError):  # the same grammar refuses it in rank too
            rank_resolver.resolve(spelling)
        return
    assert spelling in ACCEPTED  # accepted_names lists every name that resolves
    _same_everywhere(spelling, rank_resolver)
