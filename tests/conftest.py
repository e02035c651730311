import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
# Read-only public captures live beside the checkout (../shared) in development and CI.
PUBLIC = (ROOT.parent / "shared" / "captures" / "public")
if not PUBLIC.is_dir():
    PUBLIC = Path("/work/shared/captures/public")


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    return CAPTURES


@pytest.fixture(scope="session")
def public_dir() -> Path:
    if not PUBLIC.is_dir():
        pytest.skip("../shared/captures/public not present")
    return PUBLIC


def require_tshark():
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed (make test installs it when run as root)")


@pytest.fixture
def tshark():
    require_tshark()
    return shutil.which("tshark")
