import pytest
import torch

import flashlb
from flashlb import Balancer, Placement, metrics
from flashlb.redeploy import align_to, default_prices
from flashlb.synthetic import drifting_trace


def random_placement(L, N, D, S, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(L, N, generator=g, dtype=torch.float64) ** 3
    return flashlb.plan(h, D * S, D)


def test_align_keeps_loads_and_minimises_moves():
    old = random_placement(3, 12, 4, 4, 0)
    # the same placement with devices and slots shuffled must align back to zero moves
    g = torch.Generator().manual_seed(1)
    dv = old.device_view()[:, torch.randperm(4, generator=g)]
    dv = dv[..., torch.randperm(4, generator=g)]
    shuffled = Placement.from_phy2log(dv.reshape(3, 16), 12, 4)
    assert int(metrics.moves(old, shuffled).sum()) > 0
    aligned = align_to(shuffled, old)
    assert metrics.moves(old, aligned).tolist() == [0, 0, 0]
    h = torch.rand(3, 12, generator=g, dtype=torch.float64)
    assert torch.allclose(metrics.device_loads(aligned, h).sort(-1).values,
                          metrics.device_loads(shuffled, h).sort(-1).values)


def test_align_is_optimal_on_small_cases():
    import itertools

    for seed in range(5):
        old = random_placement(1, 6, 3, 2, seed)
        new = random_placement(1, 6, 3, 2, seed + 100)
        got = int(metrics.moves(old, align_to(new, old)))
        dv = new.device_view()[0]
        best = min(
            int(metrics.moves(old, Placement.from_phy2log(
                torch.stack([dv[d][list(o)] for d, o in zip(perm, orders)]).reshape(1, 6), 6, 3)))
            for perm in itertools.permutations(range(3))
            for orders in itertools.product(itertools.permutations(range(2)), repeat=3))
        assert got == best


def test_move_penalty_buys_fewer_moves():
    tr = drifting_trace(32, 6, 64, seed=2, skew=0.6, drift=0.1, burst=0.2)
    old = flashlb.plan(tr[:16], 80, 16)
    free = flashlb.plan(tr[16:], 80, 16, previous=old)
    cheap = flashlb.plan(tr[16:], 80, 16, previous=old, move_penalty=1e-3)
    cheap.validate()
    assert 0 < metrics.moves(old, cheap).sum() < metrics.moves(old, free).sum()
    # the warm search found what neither keeping old nor the default greedy (aligned) offers:
    # a search that returned old unchanged would leave only those two
    def score(p):
        return metrics.balance_ratio(p, tr[16:]) + 1e-3 * metrics.moves(old, p)

    greedy = align_to(flashlb.plan(tr[16:], 80, 16, algorithm="default"), old)
    assert bool((score(cheap) < torch.minimum(score(old), score(greedy)) - 1e-6).any())


def test_balancer_cherry_picks_and_keeps_other_layers():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(4, 3, 32, generator=g, dtype=torch.float64) + 1
    current = flashlb.plan(h, 48, 8)
    h2 = h.clone()
    h2[:, 1, :4] *= 30  # only layer 1 goes out of balance
    bal = Balancer(48, 8, threshold=1.05, expert_bytes=1000)
    up = bal.step(h2, current)
    assert up.layers.tolist() == [1]
    assert torch.equal(up.placement.phy2log[[0, 2]], current.phy2log[[0, 2]])
    assert up.after[1] < up.before[1]
    assert up.bytes_moved == int(up.moves.sum()) * 1000
    up.placement.validate()
    # the same window again: balanced layers stay; a layer changes only if it pays its moves
    up2 = bal.step(h2, up.placement)
    assert torch.equal(up2.placement.phy2log[[0, 2]], up.placement.phy2log[[0, 2]])
    cheapest = min(bal.prices())  # "auto": the prices of 48 slots on 8 devices
    paid = up2.before - up2.after - cheapest * up2.moves.to(torch.float64)
    assert bool((paid[up2.layers] >= 0).all())
    # a window where every layer is below the threshold: nothing changes
    quiet = Balancer(48, 8, threshold=1.2).step(h2, up.placement)
    assert not quiet.changed and torch.equal(quiet.placement.phy2log, up.placement.phy2log)


def test_balancer_caps_layers_per_cycle_most_gain_first():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(2, 4, 32, generator=g, dtype=torch.float64) + 1
    current = flashlb.plan(h, 48, 8)
    h2 = h.clone()
    for layer, factor in ((0, 5), (2, 40), (3, 12)):
        h2[:, layer, :3] *= factor
    up = Balancer(48, 8, threshold=1.05, max_layers_per_cycle=2).step(h2, current)
    assert up.layers.numel() == 2
    gains = (up.before - up.after)[up.layers]
    assert gains[0] >= gains[1]


def test_balancer_state_round_trip(tmp_path):
    h = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = flashlb.plan(h, 24, 4)
    a = Balancer(24, 4)
    up = a.step(h * torch.tensor([1.0, 5.0] + [1.0] * 14, dtype=torch.float64), p)
    a.step(h, up.placement)
    a.save(tmp_path / "state.pt")
    b = Balancer(24, 4)
    b.load(tmp_path / "state.pt")
    assert b.cycles == 2 and torch.equal(a.reference, b.reference)
    assert torch.equal(a.measured, b.measured) and b.measured.dtype == torch.bool
    # the next decision is the same after a restart
    h2 = h.flip(-1)
    assert torch.equal(a.step(h2, up.placement).placement.phy2log,
                       b.step(h2, up.placement).placement.phy2log)
    for bad in ({"reference": [1.0], "measured": None, "cycles": 0},
                {"reference": torch.ones(3), "cycles": 0},
                {"reference": torch.tensor([1.0, float("nan")]), "measured": torch.ones(2, dtype=torch.bool)},
                {"reference": torch.ones(3, dtype=torch.float64), "measured": torch.ones(2, dtype=torch.bool)}):
        with pytest.raises(ValueError, match="reference|measured"):
            b.load_state_dict(bad)
    assert torch.equal(a.reference, b.reference)  # a refused state changes nothing


def test_balancer_state_of_meta_or_negative_tensors_is_refused_on_load(tmp_path):
    """A state file whose 'measured' is a meta tensor (a shape, no data) was accepted, and the
    next step failed with torch's device error; a negative reference ratio (which no layer can
    have) made every layer look degraded. Both are refused where the state is read."""
    ok = {"reference": torch.ones(2, dtype=torch.float64), "measured": torch.ones(2, dtype=torch.bool),
          "cycles": 1}
    for key, value in (("measured", torch.ones(2, dtype=torch.bool, device="meta")),
                       ("reference", -torch.ones(2, dtype=torch.float64))):
        torch.save({**ok, key: value}, tmp_path / "state.pt")
        b = Balancer(16, 4)
        with pytest.raises(ValueError, match=key):
            b.load(tmp_path / "state.pt")
        with pytest.raises(ValueError, match=key):
            b.load_state_dict({**ok, key: value})
        assert b.reference is None and b.cycles == 0
    # a reference that carries autograd history is stored as plain data
    b = Balancer(16, 4)
    b.load_state_dict({**ok, "reference": torch.ones(2, dtype=torch.float64, requires_grad=True)})
    assert not b.reference.requires_grad


def test_balancer_move_budget_is_spent_where_it_gains_most():
    g = torch.Generator().manual_seed(3)
    h = torch.rand(4, 4, 32, generator=g, dtype=torch.float64) + 1
    current = flashlb.plan(h, 48, 8)
    h2 = h.clone()
    h2[:, 3, :4] *= 30   # layer 3: far out of balance
    h2[:, 0, :2] *= 1.6  # layer 0: a little
    free = Balancer(48, 8, move_penalty=1e-4).step(h2, current)
    assert int(free.moves.sum()) > 6
    for budget in (0, 6, int(free.moves.sum()) - 1):
        up = Balancer(48, 8, move_penalty=1e-4, max_moves_per_cycle=budget).step(h2, current)
        up.placement.validate()
        assert int(up.moves.sum()) <= budget
    up = Balancer(48, 8, move_penalty=1e-4, max_moves_per_cycle=6).step(h2, current)
    assert 3 in up.layers.tolist() and up.moves[3] >= up.moves[0]  # most to where it gains most
    # better than spending the budget layer by layer in order
    left, seq = 6, []
    for layer in range(4):
        one = flashlb.plan(h2[:, [layer]], 48, 8, previous=current.select_layers([layer]),
                           move_penalty=1e-4, max_moves=left)
        left -= int(metrics.moves(current.select_layers([layer]), one).sum())
        seq.append(one.phy2log)
    seq = Placement.from_phy2log(torch.cat(seq), 32, 8)
    cost = lambda p: float((metrics.balance_ratio(p, h2) + 1e-4 * metrics.moves(current, p)).sum())
    assert cost(up.placement) <= cost(seq) + 1e-9
    # a byte budget is a move budget of max_bytes // expert_bytes
    by = Balancer(48, 8, move_penalty=1e-4, expert_bytes=1000, max_bytes_per_cycle=6999).step(h2, current)
    assert torch.equal(by.placement.phy2log, up.placement.phy2log) and by.bytes_moved <= 6999


def test_balancer_leaves_the_old_basin_after_hot_experts_swap():
    from test_replan import hot_cold_swap

    h1, h2, P, D = hot_cold_swap(2)
    current = flashlb.plan(h1, P, D)
    up = Balancer(P, D).step(h2, current)
    fresh = flashlb.plan(h2, P, D)
    r_fresh = metrics.balance_ratio(fresh, h2)
    assert up.layers.numel() == 2
    assert bool((up.after - r_fresh <= 0.04 * (up.before - r_fresh)).all())
    assert int(up.moves.sum()) < int(metrics.moves(current, align_to(fresh, current)).sum())


def test_default_prices_follow_the_shape():
    # DeepSeek-V3's shape keeps the measured prices; twice the devices double them, half the
    # slots quadruple them
    assert default_prices(288, 32) == pytest.approx((1.2e-3, 4.7e-4))
    assert default_prices(288, 64) == pytest.approx((2.4e-3, 9.4e-4))
    assert default_prices(144, 32) == pytest.approx((4.8e-3, 1.88e-3))
    with pytest.raises(ValueError, match="num_physical"):
        default_prices(0, 8)
    with pytest.raises(ValueError, match="num_devices"):
        Balancer(8, 16)  # the shape's prices are checked before any cycle
    assert Balancer(288, 32).prices() == pytest.approx((1.2e-3, 4.7e-4))
    assert Balancer(160, 16).prices() == pytest.approx(default_prices(160, 16))
    # a number given is used as it is, "auto" refresh keeps the defaults' ratio to it, and
    # refresh_penalty=None prices a whole re-plan as a move
    assert Balancer(288, 32, move_penalty=1e-3).prices() == pytest.approx((1e-3, 1e-3 * 4.7 / 12))
    assert Balancer(288, 32, move_penalty=1e-3, refresh_penalty=None).prices() == (1e-3, None)
    assert Balancer(288, 32, move_penalty=0, refresh_penalty=0).prices() == (0.0, 0.0)


def test_balancer_uses_the_prices_of_its_shape():
    # "auto" resolves per window: the same decisions as the prices spelled out
    from flashlb.synthetic import swap_trace

    h = swap_trace(32, 3, 64, group_size=4, seed=5)
    current = flashlb.plan(h[:16], 80, 16)
    move, refresh = default_prices(80, 16)
    auto = Balancer(80, 16).step(h[16:], current)
    spelled = Balancer(80, 16, move_penalty=move, refresh_penalty=refresh).step(h[16:], current)
    assert torch.equal(auto.placement.phy2log, spelled.placement.phy2log)
    cheap = Balancer(80, 16, move_penalty=move / 8, refresh_penalty=refresh / 8).step(h[16:], current)
    assert int(cheap.moves.sum()) > int(auto.moves.sum())


def test_balancer_bad_input():
    p = flashlb.plan(torch.rand(2, 16), 24, 4)
    with pytest.raises(ValueError, match="threshold"):
        Balancer(24, 4, threshold=0.5)
    for kwargs, match in ((dict(max_moves_per_cycle=float("nan")), "max_moves_per_cycle"),
                          (dict(max_moves_per_cycle=-1), "max_moves_per_cycle"),
                          (dict(max_bytes_per_cycle=-5, expert_bytes=10), "max_bytes_per_cycle"),
                          (dict(max_bytes_per_cycle=100), "needs expert_bytes"),
                          (dict(move_penalty=-1e-3), "move_penalty"),
                          (dict(move_penalty=float("nan")), "move_penalty"),
                          (dict(layer_penalty=-0.5), "layer_penalty"),
                          (dict(layer_penalty=float("nan")), "layer_penalty"),
                          (dict(refresh_penalty=-1e-4), "refresh_penalty"),
                          (dict(refresh_penalty="4e-4"), "refresh_penalty"),
                          (dict(move_penalty="Auto"), "move_penalty"),
                          (dict(move_penalty=None), "move_penalty"),
                          # a bool is no ratio (True was taken as a threshold of 1.0)
                          (dict(threshold=True), "threshold"), (dict(degradation=True), "degradation"),
                          (dict(min_gain=False), "min_gain"),
                          (dict(previous=p), "previous")):
        with pytest.raises(ValueError, match=match):
            Balancer(24, 4, **kwargs)
    # numpy numbers are numbers (np.float32 was refused as "not a number >= 0")
    import numpy as np

    b = Balancer(24, 4, threshold=np.float32(1.25), degradation=np.float32(0.5), min_gain=np.float64(0.01))
    assert (b.threshold, b.degradation, b.min_gain) == pytest.approx((1.25, 0.5, 0.01))
    with pytest.raises(ValueError, match="current must place"):
        Balancer(32, 4).step(torch.rand(2, 16), p)
    missing = p.phy2log.clone()
    missing[missing == 5] = 6
    with pytest.raises(ValueError, match="no replica"):
        Balancer(24, 4).step(torch.rand(2, 16), Placement.from_phy2log(missing, 16, 4))
    with pytest.raises(TypeError):
        Balancer(24, 4).step(torch.rand(2, 16), "placement")


def test_simulate_reports_every_policy():
    tr = drifting_trace(96, 3, 32, tokens_per_episode=2048, seed=4, drift=0.05)
    res = flashlb.simulate(tr, 48, 8, episode_len=8, cycle=3, window=3)
    assert set(res) == set(flashlb.redeploy.POLICIES)
    for r in res.values():
        assert r.ratio.shape == (3, 3) and r.moves.shape == (3,) and r.mean_ratio >= 1
    bal = res["balancer"]  # slots move only in cycles that re-placed a layer
    assert bool(((bal.moves > 0) <= (bal.layers > 0)).all()) and bool((bal.layers <= 3).all())
    with pytest.raises(ValueError, match="window"):
        flashlb.simulate(tr[:30], 48, 8, episode_len=8, cycle=3, window=3)


def test_simulate_refuses_plan_options_it_sets_per_decision():
    """previous= made the 'previous' policy a TypeError ('multiple values') and silently
    re-anchored 'fresh' and 'clairvoyant'; algorithm='default' silently turned 'fresh' into
    the greedy. Options simulate sets per decision are refused up front, by name."""
    tr = drifting_trace(12, 1, 8, tokens_per_episode=256, seed=1)
    p = flashlb.plan(tr[:4], 16, 4)
    for key, value in (("previous", p), ("weights", torch.ones(4)), ("max_moves", 3), ("algorithm", "default")):
        for policy in ("previous", "fresh", "clairvoyant"):
            with pytest.raises(ValueError, match=key):
                flashlb.simulate(tr, 16, 4, cycle=2, window=4, policies=(policy,), **{key: value})


def test_hierarchical_plans_stay_hierarchical_near_a_previous_placement():
    g = torch.Generator().manual_seed(6)
    h1, h2 = torch.rand(2, 3, 32, generator=g, dtype=torch.float64)
    old = flashlb.plan(h1, 48, 8, num_groups=8, num_nodes=2)
    new = flashlb.plan(h2, 48, 8, num_groups=8, num_nodes=2, previous=old).validate()
    for layer in range(3):
        n0 = {e // 4 for e in new.phy2log[layer, :24].tolist()}
        n1 = {e // 4 for e in new.phy2log[layer, 24:].tolist()}
        assert not n0 & n1
    fresh = flashlb.plan(h2, 48, 8, num_groups=8, num_nodes=2)
    assert metrics.moves(old, new).sum() <= metrics.moves(old, fresh).sum()


def test_balancer_serves_what_the_plan_chose_on_its_own_objective():
    # The Balancer's defaults plan on the forecast; with min_gain=0 it keeps exactly what
    # plan(previous=...) chose, even where the plain window ratio would disagree, and with
    # min_gain > 0 only layers whose window ratio drops by that much.
    from flashlb.synthetic import swap_trace

    h = swap_trace(32, 4, 32, group_size=4, seed=3)
    current = flashlb.plan(h[:16], 40, 8)
    window = h[16:]
    up = Balancer(40, 8).step(window, current)
    move, refresh = default_prices(40, 8)  # the "auto" prices: 40 slots on 8 devices
    planned = flashlb.plan(window, 40, 8, previous=current, move_penalty=move,
                           refresh_penalty=refresh, forecast=True)
    changed = metrics.moves(current, planned) > 0
    assert torch.equal(up.placement.phy2log, planned.phy2log)
    assert sorted(up.layers.tolist()) == changed.nonzero().flatten().tolist()
    gated = Balancer(40, 8, min_gain=0.01).step(window, current)
    gain = metrics.balance_ratio(current, window) - metrics.balance_ratio(planned, window)
    assert sorted(gated.layers.tolist()) == (changed & (gain >= 0.01)).nonzero().flatten().tolist()
    with pytest.raises(TypeError, match="forecast"):
        Balancer(40, 8, forecast="yes")


def test_balancer_checks_forecast_options_before_any_cycle():
    with pytest.raises(ValueError, match="unknown options"):
        Balancer(40, 8, forecast={"bogus": 1})
    with pytest.raises(ValueError, match="persistence"):
        Balancer(40, 8, forecast={"persistence": 2.0})
