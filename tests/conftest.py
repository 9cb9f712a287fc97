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
