"""Shared fixtures: where the real data and the fault cases live.

The real logs and pcaps are not copied into the repository; they are read
from `../shared` beside the checkout (or from $BFLOW_SHARED).
"""

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BFLOW_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
CASES = SHARED / "cases"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real logs and pcaps (`shared/data`)."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}; set BFLOW_SHARED")
    return DATA


@pytest.fixture(scope="session")
def benign_packets(data_dir: Path) -> np.ndarray:
    """Sampled payload packets of one benign lab run, as 128-byte features."""
    from model.features.packet import PacketFeatureConfig, packet_features
    from model.features.pcap import sample_pcap

    table = sample_pcap(data_dir / "lab/benign-1/benign-1.pcap")
    x, _ = packet_features(table, PacketFeatureConfig(input_len=128))
    assert len(x) > 500
    return np.asarray(x, dtype=np.float32)


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """The fault cases (`shared/cases`)."""
    if not CASES.is_dir():
        pytest.skip(f"fault cases not found at {CASES}; set BFLOW_SHARED")
    return CASES


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Start and leave each test with structlog's defaults.

    `bflow` commands configure structlog for the whole process; a test that
    runs one in-process must not change how the next test logs.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
