import math

import pytest
import torch

import flashlb


def test_plan_returns_valid_flashlb_placement(seed_hotness):
    p = flashlb.plan(seed_hotness, 16, 8)
    p.validate()


@pytest.mark.parametrize(
    "hotness, P, D, kwargs, message",
    [
        (torch.tensor([[1.0, math.nan]]), 2, 1, {}, "hotness must be finite"),
        (torch.tensor([[1.0, math.inf]]), 2, 1, {}, "hotness must be finite"),
        (torch.tensor([[1.0, -1.0]]), 2, 1, {}, "hotness must be >= 0"),
        (torch.tensor([1.0, 2.0]), 2, 1, {}, r"hotness must be \[L, N\]"),
        (torch.ones(1, 1, 1, 2), 2, 1, {}, r"hotness must be \[L, N\]"),
        (torch.tensor([[True, False]]), 2, 1, {}, "dtype"),
        (torch.ones(1, 4), 3, 1, {}, "smaller than the number of experts"),
        (torch.ones(1, 4), 6, 4, {}, "multiple of num_devices"),
        (torch.ones(1, 2), 6, 2, {}, "twice"),
        (torch.ones(1, 4), 4, 2, {"num_groups": 3}, "num_groups=3 must divide"),
        (torch.ones(1, 4), 4, 2, {"num_nodes": 3}, "num_nodes=3 must divide"),
        (torch.ones(1, 4), 4, 2, {"algorithm": "magic"}, "algorithm must be one of"),
        (torch.ones(1, 4), 4, 2, {"time_budget": -1}, "time_budget"),
        (torch.ones(1, 4), 4.0, 2, {}, "num_physical must be an integer"),
        (torch.ones(1, 4), 4, 0, {}, "num_devices must be >= 1"),
        (torch.ones(1, 4), 4, 2, {"hierarchical": True, "num_groups": 1, "num_nodes": 2},
         "hierarchical=True needs"),
        (torch.ones(1, 4), 4, 2, {"seed": -1}, "seed"),
        (torch.ones(1, 4), 4, 2, {"smoothing": math.nan}, "smoothing"),
        # a misspelt option: named up front, not as a TypeError of the search's own signature
        (torch.ones(1, 4), 4, 2, {"smoothingg": 0.1}, "unknown options .*smoothingg"),
        (torch.ones(3, 1, 4), 4, 2, {"forecast": True, "perturb_round": 3}, "unknown options .*perturb_round"),
    ],
)
def test_bad_input_names_the_argument(hotness, P, D, kwargs, message):
    with pytest.raises(ValueError, match=message):
        flashlb.plan(hotness, P, D, **kwargs)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="hotness must be a torch.Tensor"):
        flashlb.plan([[1, 2]], 2, 1)


def test_integer_loads_and_numpy():
    import numpy as np

    p = flashlb.plan(np.array([[5, 1, 1, 1]]), 4, 2)
    p.validate()
    p2 = flashlb.plan(torch.tensor([[5, 1, 1, 1]], dtype=torch.int32), 4, 2)
    assert p == p2


def test_all_zero_layer_is_valid():
    p = flashlb.plan(torch.zeros(2, 6), 12, 4)
    p.validate()
    assert p.logcnt.sum(1).tolist() == [12, 12]


def test_rebalance_experts_drop_in_default_algorithm_is_flashlb(seed_hotness):
    phy2log, log2phy, logcnt = flashlb.rebalance_experts(seed_hotness, 16, 1, 1, 8)
    p = flashlb.Placement(phy2log, log2phy, logcnt, 8).validate()
    assert flashlb.metrics.device_loads(p, seed_hotness).max().item() < 200


def test_rebalance_experts_accepts_episodes():
    h = torch.rand(4, 2, 8, generator=torch.Generator().manual_seed(0)) * 10
    phy2log, _, logcnt = flashlb.rebalance_experts(h, 12, 1, 1, 4)
    assert phy2log.shape == (2, 12) and logcnt.sum(1).tolist() == [12, 12]
