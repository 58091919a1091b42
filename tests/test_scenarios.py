import torch

from flashlb.objective import episode_weights, normalise_episodes, weighted_peak_ratio
from flashlb.solvers.scenarios import reduce_episodes
from flashlb.synthetic import drifting_trace


def test_few_episodes_are_kept_as_they_are():
    loads, w = normalise_episodes(torch.rand(5, 2, 8, dtype=torch.float64), 4, episode_weights(5))
    got = reduce_episodes(loads, w, 16)
    assert got[0] is loads and got[1] is w


def test_scenarios_keep_the_weight_the_average_and_bound_the_peaks():
    tr = drifting_trace(40, 3, 16, seed=1, skew=0.8)
    tr[7, 1] = 0  # an episode without load weighs nothing, in a scenario too
    loads, w = normalise_episodes(tr, 4, episode_weights(40, recency_half_life=10))
    sl, sw = reduce_episodes(loads, w, 6)
    assert sl.shape == (3, 6, 16) and sw.shape == (3, 6)
    assert torch.allclose(sw.sum(1), w.sum(1))
    live = sw > 0
    # each scenario is a weighted mean of normalised episodes: device loads still average 1
    assert torch.allclose(sl.sum(-1)[live], torch.full_like(sl.sum(-1)[live], 4.0))
    # a peak of a mean is at most the mean of the peaks: the scenarios never overstate
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        phy = torch.stack([torch.randperm(16, generator=g) for _ in range(3)])
        assert bool((weighted_peak_ratio(phy, sl, sw, 4) <= weighted_peak_ratio(phy, loads, w, 4) + 1e-12).all())
    # deterministic
    again = reduce_episodes(loads, w, 6)
    assert torch.equal(again[0], sl) and torch.equal(again[1], sw)


def test_repeated_patterns_become_one_scenario_each():
    a = torch.tensor([4.0, 1, 1, 1, 1, 0, 0, 0])
    b = torch.tensor([0.0, 0, 0, 1, 1, 1, 1, 4])
    h = torch.stack([a, b] * 10).unsqueeze(1).to(torch.float64)  # [20, 1, 8]
    loads, w = normalise_episodes(h, 2, episode_weights(20))
    sl, sw = reduce_episodes(loads, w, 4)
    live = sw[0] > 0
    assert int(live.sum()) == 2 and torch.allclose(sw[0][live], torch.tensor([0.5, 0.5], dtype=torch.float64))
    got = sorted(sl[0][live].tolist())
    want = sorted(loads[0, :2].tolist())
    assert torch.allclose(torch.tensor(got), torch.tensor(want))
