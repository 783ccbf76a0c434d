"""A user's mistake ends in one ``screening <cmd>: error: ...`` line and exit 2, never a traceback;
the subject parser; did-you-mean ROI suggestions; ``screening rois``."""

import io
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from screening import atlas, rois
from screening.validation import parse_subjects
from screening.exceptions import InvalidParameterError
from screening.rank._rois import DEFAULT_COMPOSITES

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "screening.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _assert_user_error(proc, command, *names):
    """Exit 2, no traceback, and the last stderr line is the one error line, naming every value in ``names``."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"screening {command}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, visual_store):
    """Photos, an empty folder, a plain file and a ranked run folder."""
    from PIL import Image

    from screening.rank import rank

    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (240, 240, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (root / "empty").mkdir()
    (root / "afile.txt").write_text("not a folder\n")
    run = root / "run"
    (run / "responses").mkdir(parents=True)
    cols = ["L_FFC", "R_FFC", "L_V1", "R_V1", "group_04"]
    rows = [{"image_id": f"{i:016x}", "subject": s, **{c: float(rng.normal()) for c in cols}}
            for s in ("sub-01", "mean") for i in range(30)]
    table = pd.DataFrame(rows).astype({c: "float32" for c in cols})
    table.to_parquet(run / "responses" / "part-0.parquet", index=False)
    rank(str(run / "responses"), str(run / "rankings"), top_k=3, n_null=50, null_draws=50)
    return {"store": visual_store, "photos": photos, "empty": root / "empty", "file": root / "afile.txt",
            "missing": root / "nope", "run": run, "root": root}


# -- every subcommand, bad input -> one line, exit 2 --------------------------------------------------
CASES = {
    # the three reported ones
    "encode-subject-spelled-out-of-range": ("encode", lambda f: [f["photos"], "--store", f["store"], "--subject", "sub-09"], ["sub-09", "1, 2, 3"]),
    "encode-subject-9": ("encode", lambda f: [f["photos"], "--store", f["store"], "--subject", "9"], ["9", "valid values"]),
    "encode-roi-FFA": ("encode", lambda f: [f["photos"], "--store", f["store"], "--roi", "FFA"], ["'FFA'", "did you mean 'FFC'"]),
    "encode-missing-image": ("encode", lambda f: [f["missing"], "--store", f["store"]], ["nope"]),
    "encode-empty-folder": ("encode", lambda f: [f["empty"], "--store", f["store"]], ["empty", ".jpg"]),
    "encode-missing-store": ("encode", lambda f: [f["photos"], "--store", f["missing"]], ["nope"]),
    "encode-store-is-a-file": ("encode", lambda f: [f["photos"], "--store", f["file"]], ["afile.txt"]),
    "encode-model-id": ("encode", lambda f: [f["photos"], "--store", f["store"], "--model-id", "CNN9"], ["'CNN9'", VIS]),
    "encode-out-folder-missing": ("encode", lambda f: [f["photos"], "--store", f["store"], "--out", f["missing"] / "x.csv"], ["nope"]),
    "ingest-empty-folder": ("ingest", lambda f: [f["empty"], f["root"] / "o1"], ["empty", "no images", ".jpg"]),
    "ingest-missing-src": ("ingest", lambda f: [f["missing"], f["root"] / "o2"], ["nope", "does not exist"]),
    "ingest-out-is-a-file": ("ingest", lambda f: [f["photos"], f["file"]], ["afile.txt"]),
    "ingest-shard-rows": ("ingest", lambda f: [f["photos"], f["root"] / "o3", "--shard-rows", "0"], ["shard_rows", "0"]),
    "rank-roi-FFA": ("rank", lambda f: [f["run"] / "responses", f["root"] / "r1", "--roi", "FFA"], ["'FFA'"]),
    "rank-missing-responses": ("rank", lambda f: [f["missing"], f["root"] / "r2"], ["nope"]),
    "rank-out-is-a-file": ("rank", lambda f: [f["run"] / "responses", f["file"]], ["afile.txt"]),
    "rank-missing-roi-config": ("rank", lambda f: [f["run"] / "responses", f["root"] / "r3", "--roi-config", f["missing"] / "c.yaml"], ["c.yaml"]),
    "rank-top-k": ("rank", lambda f: [f["run"] / "responses", f["root"] / "r4", "--top-k", "0"], ["top_k", "0"]),
    "report-missing-run": ("report", lambda f: [f["missing"]], ["nope"]),
    "report-run-is-a-file": ("report", lambda f: [f["file"]], ["afile.txt"]),
    "report-roi-FFA": ("report", lambda f: [f["run"], "--roi", "FFA", "--no-flatmaps"], ["'FFA'"]),
    "report-subject-9": ("report", lambda f: [f["run"], "--subject", "9", "--no-flatmaps"], ["'9'", "sub-01"]),
    "report-top-k": ("report", lambda f: [f["run"], "--top-k", "-1", "--no-flatmaps"], ["--top-k", "-1"]),
    "contrast-missing-run": ("contrast", lambda f: [f["missing"], "--contrast", "faces>rest"], ["nope", "--vertex-stats"]),
    "contrast-run-without-stats": ("contrast", lambda f: [f["run"], "--contrast", "faces>rest"], ["run", "no vertex statistics"]),
    "search-bad-target": ("search", lambda f: [f["run"], "--target", "V1"], ["'V1'", "ROI=VALUE"]),
    "search-missing-run": ("search", lambda f: [f["missing"], "--like", "abc"], ["nope"]),
    "make-store-dir-is-a-file": ("make-store", lambda f: [f["file"], "--variant", "visual", "--width", "4"], ["afile.txt"]),
    "make-store-width": ("make-store", lambda f: [f["root"] / "ms", "--variant", "visual", "--width", "0"], ["width=0"]),
    "rois-variant": ("rois", lambda f: ["--variant", "V1"], ["'V1'", "all", "visual"]),
    "demo-out-is-a-file": ("demo", lambda f: ["--out", f["file"], "--variant", "visual", "--width", "4"], ["afile.txt"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_is_one_line_and_exit_2(files, case):
    command, argv, names = CASES[case]
    _assert_user_error(_cli(command, *argv(files)), command, *names)


def test_every_subcommand_has_a_case():
    from screening.cli import COMMANDS

    # `screening run` handles its own exits (screening/pipeline/cli.py); its cases live with it
    assert set(COMMANDS) - {"run"} == {c for c, _, _ in CASES.values()}


def test_encode_takes_the_spellings_that_used_to_crash(files, tmp_path):
    out = tmp_path / "t.csv"
    proc = _cli("encode", files["photos"], "--store", files["store"], "--subject", "sub-01,subj03", "--roi", "FFC,L_V1",
                "--precision", "fp32", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out)
    assert list(table.subject.unique()) == ["sub-01", "sub-03"]
    assert list(table.columns) == ["image", "subject", "FFC", "L_V1"] and len(table) == 4


def test_real_bugs_keep_their_traceback(monkeypatch, capsys):
    """Only ScreeningError and path OSErrors are turned into a line; a bug propagates."""
    from screening import cli
    import screening._rois_cli as mod

    def boom(args):
        raise KeyError("a bug")

    monkeypatch.setattr(mod, "run_from_args", boom)
    with pytest.raises(KeyError):
        cli.main(["rois"])

    def disk_full(args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod, "run_from_args", disk_full)
    with pytest.raises(OSError):
        cli.main(["rois"])

    def denied(args):
        raise PermissionError(13, "Permission denied", "/root/secret")

    monkeypatch.setattr(mod, "run_from_args", denied)
    assert cli.main(["rois"]) == 2
    assert capsys.readouterr().err.strip() == "screening rois: error: Permission denied: '/root/secret'"


def test_errors_carry_their_exit_code_and_only_main_prints_them(monkeypatch, capsys):
    """A user's mistake: one 'error:' line, exit 2. Work that ran but did not complete (UnitsFailedError,
    OutputError): its message, exit 1. The code survives the pickle round trip Ray makes."""
    import pickle

    from screening import cli
    from screening.exceptions import InvalidParameterError, OutputError, ScreeningError, UnitsFailedError
    import screening._rois_cli as mod

    assert ScreeningError.exit_code == InvalidParameterError.exit_code == 2
    assert UnitsFailedError.exit_code == OutputError.exit_code == 1
    assert pickle.loads(pickle.dumps(UnitsFailedError("x"))).exit_code == 1
    for exc, code, line in ((InvalidParameterError("top_k=-1 must be >= 0"), 2,
                             "screening rois: error: top_k=-1 must be >= 0"),
                            (UnitsFailedError("1 unit(s) could not be committed"), 1,
                             "screening rois: 1 unit(s) could not be committed")):
        def fail(args, exc=exc):
            raise exc

        monkeypatch.setattr(mod, "run_from_args", fail)
        assert cli.main(["rois"]) == code
        assert capsys.readouterr().err.strip() == line


# -- parse_subjects -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, want", [
    (1, ("sub-01",)), (np.int64(8), ("sub-08",)), ("1", ("sub-01",)), ("01", ("sub-01",)), ("sub-1", ("sub-01",)),
    ("sub-01", ("sub-01",)), ("sub01", ("sub-01",)), ("sub_01", ("sub-01",)), ("subj01", ("sub-01",)),
    ("subject1", ("sub-01",)), ("S1", ("sub-01",)), ("s01", ("sub-01",)), ("NSD-01", ("sub-01",)),
    (" Sub-02 ", ("sub-02",)), ("3,1", ("sub-03", "sub-01")), ("sub-01, subj04", ("sub-01", "sub-04")),
    ([2, "sub-05"], ("sub-02", "sub-05")), ((7,), ("sub-07",)), (np.array([4, 6]), ("sub-04", "sub-06")),
    ("all", tuple(f"sub-0{i}" for i in range(1, 9))), ("ALL", tuple(f"sub-0{i}" for i in range(1, 9))),
])
def test_parse_subjects_spellings(value, want):
    assert parse_subjects(value) == want


@pytest.mark.parametrize("value, shown", [
    (0, "subject 0 is not valid"), (9, "subject 9 is not valid"), ("sub-09", "subject='sub-09' is not valid"),
    ("9", "subject='9'"), (True, "subject True"), (1.0, "subject 1.0"), (None, "subject None"), ("-1", "'-1'"),
    ("everyone", "'everyone'"), ("1,x", "'x' in '1,x'"), ([1, 1], "given twice"), ("1,01", "given twice"),
    ([], "empty"), ("", "empty"), (",", "empty"), (["all"], "'all' in ['all']"),
])
def test_parse_subjects_errors_name_value_and_valid_ones(value, shown):
    with pytest.raises(InvalidParameterError) as e:
        parse_subjects(value)
    msg = str(e.value)
    assert shown in msg
    assert "given twice" in shown or "valid values: 1, 2, 3, 4, 5, 6, 7, 8" in msg
    assert str(pickle.loads(pickle.dumps(e.value))) == msg


def test_parse_subjects_names_the_parameter():
    with pytest.raises(InvalidParameterError, match="--subject='sub-9x'"):
        parse_subjects("sub-9x", name="--subject")


# -- did you mean -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, name, composites, first", [
    ("all", "FFA", None, ["FFC"]),
    ("all", "FFA", DEFAULT_COMPOSITES, ["FFC", "faces"]),
    ("all", "PPA", None, ["PHA1", "PHA2", "PHA3"]),
    ("all", "PPA", DEFAULT_COMPOSITES, ["PHA1-3", "places"]),
    ("all", "R_PPA", None, ["R_PHA1", "R_PHA2", "R_PHA3"]),
    ("all", "l_ffc", None, ["L_FFC"]),
    ("all", "ffc", None, ["FFC"]),
    ("all", "group4", None, ["group_04"]),
    ("all", "GlasserGroup_12", None, ["group_12"]),
    ("all", "EVC", DEFAULT_COMPOSITES, ["early_visual", "V1"]),
    ("all", "MT+", None, ["MT", "MST", "V4t", "FST"]),
    ("all", "L_FFX", None, ["L_FFC"]),
    ("visual", "FFA", DEFAULT_COMPOSITES, ["FFC", "faces"]),
    ("visual", "L_4", None, ["L_V4"]),
])
def test_did_you_mean(variant, name, composites, first):
    with pytest.raises(InvalidParameterError) as e:
        rois.build_roi_set(variant, [name], composites=composites)
    msg = str(e.value)
    assert repr(name) in msg
    got = rois.suggest_names(name, rois.accepted_names(variant, composites))
    assert got[:len(first)] == first
    assert "did you mean " + repr(first[0]) in msg
    for s in got:  # a suggestion is always a name that works in that context
        rois.resolve_roi(s, variant, composites)


def test_suggestions_only_offer_what_the_context_accepts():
    # PHA1-3 and places have no vertex in the visual variant: never suggested there
    got = rois.suggest_names("PPA", rois.accepted_names("visual", DEFAULT_COMPOSITES))
    assert not {"PHA1-3", "places", "PHA1"} & set(got)
    # composites are offered only when the context takes them
    assert "faces" not in rois.suggest_names("FFA", rois.accepted_names("all"))
    with pytest.raises(InvalidParameterError) as e:
        rois.resolve_roi("zzzz", "all")
    assert "did you mean" not in str(e.value)


def test_api_roi_typo_fails_before_the_model_load(visual_store, monkeypatch):
    from screening import BERG

    berg = BERG(str(visual_store))
    monkeypatch.setattr(berg.store, "load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    with pytest.raises(InvalidParameterError, match=r"Unknown ROI 'FFA'.*did you mean 'FFC'"):
        berg.get_encoding_model(VIS, subject=1, selection={"roi": ["FFA"]})


# -- screening rois -----------------------------------------------------------------------------------
def _independent_counts(variant):
    """Model vertices per name from the atlas alone (grayordinates ∩ the variant's vertex mapping)."""
    mapping = atlas.variant_vertex_mapping(variant)
    areas = {n: int(np.isin(g, mapping).sum()) for n, g in atlas.roi_grayordinates().items()}
    areas = {n: c for n, c in areas.items() if c}
    groups = atlas.glasser_group_id()[atlas.variant_vertex_mask(variant)]
    want = {("area", n): c for n, c in areas.items()}
    for base in {n[2:] for n in areas}:
        want[("bilateral", base)] = areas.get("L_" + base, 0) + areas.get("R_" + base, 0)
    for g in np.unique(groups):
        want[("group", atlas.group_column(g))] = int((groups == g).sum())
    grays = atlas.roi_grayordinates()
    for comp, members in DEFAULT_COMPOSITES.items():
        for h, sides in (("", ("L_", "R_")), ("L_", ("L_",)), ("R_", ("R_",))):
            g = [grays[s + m] for m in members for s in sides if s + m in grays]
            n = int(np.isin(np.unique(np.concatenate(g)), mapping).sum())
            if all(any(s + m in areas for s in ("L_", "R_")) for m in members):
                want[("composite", h + comp)] = n
    return want


@pytest.mark.parametrize("variant, n_areas", [("all", 357), ("visual", 52)])
def test_rois_lists_every_name_with_its_vertex_count(variant, n_areas, capsys):
    from screening.cli import main

    assert main(["rois", "--variant", variant, "--tsv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), sep="\t")
    got = {(k, n): int(c) for k, n, c in zip(table.kind, table.name, table.vertices)}
    assert got == _independent_counts(variant)
    assert (table.kind == "area").sum() == n_areas
    for kind, name in got:  # everything listed is accepted where the listing says
        if kind != "composite" or name in DEFAULT_COMPOSITES:
            rois.resolve_roi(name, variant, DEFAULT_COMPOSITES)


def test_rois_human_output(capsys):
    from screening.cli import main

    assert main(["rois"]) == 0
    out = capsys.readouterr().out
    n_ffc = rois.resolve_roi("FFC", "all").size
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["FFC"])
    assert f"{n_ffc:,}" in line and "L_FFC + R_FFC" in line
    assert "group_04" in out and "faces" in out and "L_faces" in out
    assert "not accepted here: L_H" in out and "R_RSC" in out  # the three areas MOSAIC leaves without a vertex
