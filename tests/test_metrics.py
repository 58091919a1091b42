import pytest
import torch

from flashlb import Placement, metrics


def test_device_loads_split_replicas(seed_hotness):
    # expert 0 twice: each replica carries 300
    p = Placement.from_phy2log(torch.tensor([[0, 1, 0, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7]]), 8, 8)
    loads = metrics.device_loads(p, seed_hotness)
    assert loads.shape == (1, 8)
    assert loads[0, 0].item() == 300 + 280
    assert loads.sum().item() == pytest.approx(1450)


def test_device_loads_per_episode():
    p = Placement.from_phy2log(torch.tensor([[0, 1]]), 2, 2)
    h = torch.tensor([[[3.0, 1.0]], [[1.0, 1.0]]])  # [T=2, L=1, N=2]
    loads = metrics.device_loads(p, h)
    assert loads.tolist() == [[[3.0, 1.0]], [[1.0, 1.0]]]
    assert metrics.peak_avg_ratio(loads).tolist() == [[1.5], [1.0]]
    assert metrics.balance_ratio(p, h).tolist() == [1.25]
    w = torch.tensor([0.0, 1.0])
    assert metrics.balance_ratio(p, h, w).tolist() == [1.0]


def test_zero_load_counts_as_balanced():
    p = Placement.from_phy2log(torch.tensor([[0, 1]]), 2, 2)
    assert metrics.balance_ratio(p, torch.zeros(1, 2)).tolist() == [1.0]
    assert metrics.balance_ratio(p, torch.zeros(3, 1, 2)).tolist() == [1.0]


def test_episode_without_load_weighs_nothing():
    # as in the solvers' objective: an idle episode neither helps nor hurts the average
    p = Placement.from_phy2log(torch.tensor([[0, 1]]), 2, 2)
    h = torch.tensor([[[3.0, 1.0]], [[0.0, 0.0]]])
    assert metrics.balance_ratio(p, h).tolist() == [1.5]
    assert metrics.balance_ratio(p, h, torch.tensor([0.25, 0.75])).tolist() == [1.5]
    with pytest.raises(ValueError, match="one entry per episode"):
        metrics.balance_ratio(p, h, torch.ones(3))


def test_lower_bound_ratio_is_per_episode():
    # the CLI's old example: a summed-window "bound" of 1.94 sat beside per-episode ratios of 1.5
    h = torch.tensor([[[100.0, 0, 0, 0]], [[1.0, 1, 1, 1]]])
    lb = metrics.lower_bound_ratio(h, 4, 2)
    # one replica each: the hot expert sets 2.0 in the first episode, the flat one 1.0
    assert lb.tolist() == pytest.approx([1.5])
    # and it bounds what any placement reaches, episode by episode, weighted alike
    from flashlb.solvers.exact import exact_plan

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        h = torch.rand(3, 2, 5, generator=g, dtype=torch.float64) ** 4
        w = torch.rand(3, generator=g, dtype=torch.float64)
        best, _ = exact_plan(h, 6, 3, weights=w)
        assert bool((metrics.lower_bound_ratio(h, 6, 3, w) <= metrics.balance_ratio(best, h, w) + 1e-12).all())


def test_lower_bound(seed_hotness):
    lb = metrics.lower_bound_peak(seed_hotness, 16, 8)
    # average 181.25; best min-max replica load with 16 slots is 120 -> the average binds
    assert lb.item() == pytest.approx(181.25)
    lb2 = metrics.lower_bound_peak(torch.tensor([[100.0, 1.0]]), 2, 2)
    assert lb2.item() == 100.0  # one replica each: the hot expert alone sets the peak


def test_moves():
    a = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3]]), 4, 2)
    b = Placement.from_phy2log(torch.tensor([[0, 2, 1, 3]]), 4, 2)
    assert metrics.moves(a, b).tolist() == [2]
    assert metrics.moves(a, a).tolist() == [0]


def test_episode_weights():
    assert metrics.episode_weights(4).tolist() == [0.25] * 4
    w = metrics.episode_weights(3, recency_half_life=1)
    assert w.tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    with pytest.raises(ValueError, match="recency_half_life"):
        metrics.episode_weights(3, recency_half_life=0)


def test_metrics_check_shapes(seed_hotness):
    p = Placement.from_phy2log(torch.tensor([[0, 1]]), 2, 2)
    with pytest.raises(ValueError, match="experts"):
        metrics.device_loads(p, seed_hotness)
