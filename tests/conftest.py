"""Shared fixtures. Environment first: Ray 2.60 local clusters need these on this machine."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def visual_store(tmp_path_factory):
    """A reduced-width (16 channels) synthetic store of the visual variant, written once per session."""
    from screening.store.synthetic import make_store

    root = tmp_path_factory.mktemp("visual-store")
    make_store(root, variant="visual", seed=0, width=16)
    return root
