"""Shared fixtures. Environment first: Ray 2.60 local clusters need these on this machine."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# The node cache of collapsed ROI matrices and the download cache: a private one per test session, not ~/.cache
# (set before any local Ray starts, so its workers inherit it).
os.environ.setdefault("SCREENING_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="screening-test-cache-"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def visual_store(tmp_path_factory):
    """A reduced-width (16 channels) synthetic store of the visual variant, written once per session."""
    from screening.store.synthetic import make_store

    root = tmp_path_factory.mktemp("visual-store")
    make_store(root, variant="visual", seed=0, width=16)
    return root


# Fake credentials for the loopback S3 server, given to Ray workers at start (a worker's environment is fixed when the
# local cluster starts, so a test's monkeypatch cannot reach it).
TEST_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                # fewer botocore retries, so the S3 fault tests reach our own retry layer in seconds
                "AWS_MAX_ATTEMPTS": "3", "AWS_RETRY_MODE": "standard"}


@pytest.fixture(scope="module")
def ray_local():
    """A private in-process local Ray (2 CPUs, no dashboard) for one test module; never joins another cluster."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": dict(TEST_AWS_ENV)})
    yield ray
    ray.shutdown()



@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``SCREENING_CI=1``, set by ``.ci/run``) a skipped test is a failed test: CI installs what every test needs."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("SCREENING_CI") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (SCREENING_CI=1), which must run every test: {report.longrepr}"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: without it they are deselected, not skipped (CI fails on skips), and said so."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"{len(gpu)} GPU test(s) deselected: torch sees no CUDA device "
                            f"(benchmarks/gpu_check.sh runs them with -m gpu on a GPU machine)")
