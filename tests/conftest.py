import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
REFVECTORS = Path(__file__).resolve().parent / "data" / "refvectors"


@pytest.fixture(scope="session")
def refvectors() -> Path:
    return REFVECTORS
