import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository. Missing data fails under CI (env ``CI``
    set) and skips elsewhere, so CI never passes without the real-data tests."""
    if not SHARED_DATA.is_dir():
        msg = f"real test data not found at {SHARED_DATA}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


def _run_workflow(workdir: Path, config: dict, targets=(), check: bool = True):
    """Run the Snakefile with ``config`` (merged over config/config.yaml) on 2 cores.

    The config is written to ``workdir/config.yaml``; targets go before ``--configfile``
    (which takes several values). ``check`` fails the test on a non-zero exit, showing
    the end of Snakemake's output.
    """
    import subprocess
    import sys

    import yaml

    cfg = Path(workdir) / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", *map(str, targets), "--cores", "2", "--nolock"]
    proc = subprocess.run(
        cmd + ["--configfile", str(cfg)], cwd=ROOT, capture_output=True, text=True
    )
    if check and proc.returncode:
        pytest.fail(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def run_workflow():
    """The function :func:`_run_workflow`, for integration tests."""
    return _run_workflow


@pytest.fixture(scope="session")
def ixi_config(shared_data):
    """Config for 3 real IXI subjects (2 mm, with skull, stripped with Colin27) at 4 mm with
    1 affine + 1 SyN template iteration; call it with the run folder, update as needed."""

    def make(tmp: Path) -> dict:
        colin = shared_data / "templates" / "tpl-Colin27"
        return {
            "bids_dir": str(shared_data / "ixi"),
            "participant_label": ["IXI012", "IXI013", "IXI014"],
            "output_dir": str(tmp / "out"),
            "work_dir": str(tmp / "work"),
            "resolution": 4.0,
            "skull_strip_template": {
                "head": str(colin / "tpl-Colin27_res-1_T1w.nii.gz"),
                "mask": str(colin / "tpl-Colin27_res-1_desc-brain_mask.nii.gz"),
            },
            "template": {"name": "test", "affine_iterations": 1, "syn_iterations": 1},
        }

    return make


def pytest_collection_modifyitems(config, items):
    """Keep the split honest: every test under tests/integration carries the
    ``integration`` marker, and no unit test may use the real data or run the workflow."""
    for item in items:
        path = Path(str(item.fspath))
        integration = "integration" in path.parts
        if integration and item.get_closest_marker("integration") is None:
            raise pytest.UsageError(
                f"{item.nodeid}: tests/integration needs @pytest.mark.integration"
            )
        uses_data = {"shared_data", "run_workflow", "ixi_config"} & set(item.fixturenames)
        if not integration and (uses_data or item.get_closest_marker("integration")):
            raise pytest.UsageError(
                f"{item.nodeid}: real data or workflow runs belong in tests/integration"
            )
