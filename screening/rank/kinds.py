"""The kinds of ranked list, one :class:`RankingKind` each, in one registry (:data:`KINDS`).

A kind's name is what the rankings table's ``kind`` column holds; the object says what such a list is (per ROI or
per contrast, cut by ``--diverse``, measured for label enrichment) and how the report titles and shows it. The
ranker, the report and the search ask these objects instead of comparing kind names; a new kind is registered
here, once (:func:`register`), and the report shows it beside each ROI's lists when it has a ``table``.
"""

from __future__ import annotations

from dataclasses import dataclass


#: The ``subject`` of the consensus rows (one list over all subjects).
CONSENSUS_SUBJECT = "consensus"


@dataclass(frozen=True)
class ReportTable:
    """How the report shows a kind's list in each ROI's section, after its top and bottom lists."""

    title: str
    note: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RankingKind:
    """One kind of ranked list."""

    name: str                       # the rankings table's ``kind``
    description: str                # what a list of this kind holds (rank's documentation)
    per_roi: bool = True            # one list per ranked ROI; else one per contrast (``roi`` is ``A>B``)
    contrast: bool = False          # ranked by a difference of two ROIs; the report gives them their own section
    diverse: bool = False           # ``rank --diverse`` cuts it to k distinct images (the rest: ``<name>_skipped``)
    labelled: bool = False          # ``rank --labels`` measures its label enrichment
    subject: str | None = None      # the one subject of its rows (consensus); None: a list per subject
    title: str = ""                 # how the report titles one of its lists; ``{k}`` is the list's length
    table: ReportTable | None = None    # shown in each ROI's section (with the subject shown, or ``subject``)
    explain_absence: bool = False   # no list of it: the report says why (the ranking's note starting with name)
    skipped_of: str | None = None   # the kind whose near-copies this records (``rank --diverse``)

    def rows(self, table):
        """The rows of this kind in a rankings, sets or enrichment table."""
        return table[table.kind == self.name]

    def skipped(self) -> "RankingKind":
        """The kind recording the near-copies ``--diverse`` left out of lists of this kind."""
        return KINDS[f"{self.name}_skipped"]


KINDS: dict[str, RankingKind] = {}


def register(kind: RankingKind) -> RankingKind:
    """Add a kind to the registry (refused if its name is taken); returns it."""
    if kind.name in KINDS:
        raise ValueError(f"ranking kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def _register_skipped(kind: RankingKind) -> RankingKind:
    return register(RankingKind(f"{kind.name}_skipped", f"images left out of a {kind.name} list by --diverse: each "
                                f"a near-copy (duplicate_of) of an image listed above it", skipped_of=kind.name))


TOPK = register(RankingKind("topk", "the k images with the highest response, per ROI and subject", diverse=True,
                            labelled=True, title="top-{k}"))
BOTTOMK = register(RankingKind("bottomk", "the k images with the lowest response (rank 1 = lowest)", diverse=True,
                               labelled=True, title="bottom-{k} (rank 1 = lowest)"))
CONTRAST = register(RankingKind("contrast", "images ranked by ROI A minus ROI B (``roi`` = ``A>B``)", per_roi=False,
                                contrast=True, title="{roi}"))
CONSENSUS = register(RankingKind(
    "consensus", "images ranked by their mean z over subjects (``subject`` = ``consensus``)",
    subject=CONSENSUS_SUBJECT, title="consensus over subjects", table=ReportTable(
        "consensus over subjects", "score = the image's mean z over the subjects; n_subjects_topk = subjects with "
        "it in their own top-k", ("rank", "file", "image_id", "score", "n_subjects_topk", "margin", "p_null"))))
SELECTIVITY = register(RankingKind(
    "selectivity", "images ranked by the ROI's z minus the mean z of its comparison set", title="most selective",
    explain_absence=True, table=ReportTable(
        "most selective", "score = z of this ROI minus the mean z of the comparison areas (every area column not "
        "overlapping it, unless --comparison was given)",
        ("rank", "file", "image_id", "score", "response", "z", "margin", "p_null"))))
for _kind in (TOPK, BOTTOMK):
    _register_skipped(_kind)


def shown_in_roi_sections() -> list[RankingKind]:
    """The kinds the report shows as tables in each ROI's section, in registration order."""
    return [k for k in KINDS.values() if k.table is not None]


def names(**having) -> list[str]:
    """The names of the kinds whose attributes equal ``having`` (``names(diverse=True)``), in registration order."""
    return [k.name for k in KINDS.values() if all(getattr(k, a) == v for a, v in having.items())]


def documented() -> str:
    """The kinds as ``rank``'s documentation lists them."""
    return "; ".join(f"``{k.name}``: {k.description}" for k in KINDS.values())
