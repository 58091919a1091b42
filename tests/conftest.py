import json
from pathlib import Path

import pytest
import torch

SEED_LOADS = [600, 560, 120, 120, 20, 10, 10, 10]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sglang-dsv3-logical-count"


@pytest.fixture
def seed_hotness():
    """The brief's example: 8 experts, 16 slots on 8 devices. [1, 8]"""
    return torch.tensor([SEED_LOADS], dtype=torch.float64)


def real_files():
    return sorted(DATA.glob("*.json")) if DATA.is_dir() else []


def load_real(path) -> torch.Tensor:
    """[58, 256] MoE layers of one shared statistics file."""
    h = torch.tensor(json.loads(Path(path).read_text())["logical_count"], dtype=torch.float64)
    return h[h.sum(-1) > 0]


@pytest.fixture
def real_hotness():
    files = real_files()
    if not files:
        pytest.skip("the shared DeepSeek-V3 statistics (../shared/data) are not present")
    return load_real(files[0])
