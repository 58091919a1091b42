"""Move-aware re-planning (flashlb/solvers/replan.py) and plan(previous=..., max_moves=...)."""

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashlb
from flashlb import Placement, metrics
from flashlb import align_to
from flashlb.solvers import replan as R
from flashlb.synthetic import swap_trace


def window_objective(placement: Placement, h: torch.Tensor) -> torch.Tensor:
    """[L] mean over loaded episodes of peak/avg, written apart from the solver's code."""
    out = []
    for layer in range(placement.num_layers):
        phy = placement.phy2log[layer].tolist()
        cnt = placement.logcnt[layer].tolist()
        S = placement.slots_per_device
        vals = []
        for t in range(h.shape[0]):
            loads = [sum(float(h[t, layer, e]) / cnt[e] for e in phy[d * S:(d + 1) * S])
                     for d in range(placement.num_devices)]
            avg = sum(loads) / len(loads)
            if avg > 0:
                vals.append(max(loads) / avg)
        out.append(sum(vals) / len(vals) if vals else 1.0)
    return torch.tensor(out, dtype=torch.float64)


def normalised(h, D):
    from flashlb.objective import episode_weights, normalise_episodes

    return normalise_episodes(h, D, episode_weights(h.shape[0]))


def random_placement(L, N, D, S, seed):
    """A duplicate-free placement with every expert, not planned for any load."""
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(L, N, generator=g, dtype=torch.float64) ** 4 + 0.01
    return flashlb.plan(h, D * S, D)


def same_devices(a: Placement, b: Placement) -> torch.Tensor:
    """[L] whether the two placements put the same experts together, devices in any order."""
    def devices(p):
        per = p.phy2log.view(p.num_layers, p.num_devices, -1).sort(-1).values
        return [sorted(map(tuple, per[layer].tolist())) for layer in range(p.num_layers)]

    return torch.tensor([x == y for x, y in zip(devices(a), devices(b))])


@st.composite
def instances(draw):
    D = draw(st.integers(2, 5))
    S = draw(st.integers(1, 4))
    N = draw(st.integers(max(S, 2), D * S))
    L = draw(st.integers(1, 3))
    T = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    skew = draw(st.sampled_from([0.5, 1.0, 3.0]))
    h = torch.rand(T, L, N, generator=g, dtype=torch.float64) ** (1 + 3 * skew)
    if draw(st.booleans()):  # hot and cold experts trade places
        perm = torch.randperm(N, generator=g)
        h = h[..., perm]
    if draw(st.booleans()):
        h[draw(st.integers(0, T - 1))] = 0  # an idle episode
    return h, D, S, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from([0.0, 1e-3, 0.02, 0.2]), st.sampled_from([0.0, 0.0, 0.05, 0.3]),
       st.sampled_from([None, None, 0.0, 0.4]))
def test_never_worse_than_keep_and_fresh_aligned(inst, penalty, per_layer, refresh):
    h, D, S, seed = inst
    T, L, N = h.shape
    P = D * S
    old = random_placement(L, N, D, S, seed + 1)
    whole = penalty if refresh is None else refresh * penalty  # the price of a whole re-plan
    new = flashlb.plan(h, P, D, previous=old, move_penalty=penalty, layer_penalty=per_layer,
                       refresh_penalty=None if refresh is None else whole).validate()
    fresh = align_to(flashlb.plan(h, P, D), old)
    greedy = align_to(flashlb.plan(h, P, D, algorithm="default"), old)

    def cost(p, price):
        moved = metrics.moves(old, p).to(torch.float64)
        return window_objective(p, h) + price * moved + per_layer * (moved > 0).to(torch.float64)

    # ours is priced as a whole re-plan where it is one (the fresh plan, or the greedy's,
    # devices in any order: ties in the alignment may label them otherwise)
    rebuilt = same_devices(new, fresh) | same_devices(new, greedy)
    f64 = lambda x: torch.tensor(float(x), dtype=torch.float64)
    ours = cost(new, torch.where(rebuilt, f64(whole), f64(penalty)))
    keep, theirs = cost(old, penalty), cost(fresh, whole)
    assert bool((ours <= torch.minimum(keep, theirs) + 1e-9).all()), (ours, keep, theirs)


def test_a_cheaper_refresh_re_plans_a_swapped_layer_whole():
    h1, h2, P, D = hot_cold_swap(0)
    old = flashlb.plan(h1, P, D)
    fresh = align_to(flashlb.plan(h2, P, D), old)
    near = flashlb.plan(h2, P, D, previous=old, move_penalty=3e-3)
    whole = flashlb.plan(h2, P, D, previous=old, move_penalty=3e-3, refresh_penalty=1e-5)
    # dear moves alone: a repair near the placement in service; a cheap refresh: the fresh plan
    assert bool((metrics.moves(old, near) < metrics.moves(old, fresh)).all())
    assert bool(same_devices(whole, fresh).all())
    assert torch.equal(metrics.moves(old, whole), metrics.moves(old, fresh))
    assert bool((metrics.balance_ratio(whole, h2) < metrics.balance_ratio(near, h2)).all())
    # the same price for both: exactly the plan without it
    same = flashlb.plan(h2, P, D, previous=old, move_penalty=3e-3, refresh_penalty=3e-3)
    assert torch.equal(same.phy2log, near.phy2log)


def test_refresh_penalty_prices_the_fresh_column_only():
    obj = torch.tensor([[1.50, 1.10, 1.20], [1.30, 1.29, 1.28]], dtype=torch.float64)
    moves = torch.tensor([[0, 200, 40], [0, 200, 30]])
    assert R.choose(obj, moves, 1e-3).tolist() == [2, 0]
    # at 1e-4 a fresh move: layer 0's fresh plan (1.10 + 0.02) beats the repair (1.20 + 0.04)
    assert R.choose(obj, moves, 1e-3, refresh_penalty=1e-4).tolist() == [1, 0]
    assert R.choose(obj, moves, 1e-3, 150, refresh_penalty=1e-4).tolist() == [2, 0]


def test_layer_penalty_is_paid_once_per_layer_that_moves():
    # columns: keep, a small repair, a large one; three layers with different gains
    obj = torch.tensor([[1.30, 1.27, 1.26], [1.60, 1.20, 1.10], [1.05, 1.04, 1.03]], dtype=torch.float64)
    moves = torch.tensor([[0, 10, 40], [0, 12, 60], [0, 4, 30]])
    assert R.choose(obj, moves, 1e-4).tolist() == [2, 2, 2]
    # 0.05 a layer: the first layer's 0.03-0.04 gains and the third's do not pay; the second
    # layer still moves, and as far as before (the fixed price does not change the margin)
    assert R.choose(obj, moves, 1e-4, layer_penalty=0.05).tolist() == [0, 2, 0]
    # under a budget the knapsack pays it too
    assert R.choose(obj, moves, 1e-4, 50, layer_penalty=0.05).tolist() == [0, 1, 0]


def test_a_layer_penalty_stops_chasing_noise_but_not_a_swap():
    # layer 0: the same popularity, new noise (in-window gains are noise); layer 1: hot and
    # cold experts traded places (a real repair)
    g = torch.Generator().manual_seed(5)
    N, P, D = 32, 48, 8
    base = torch.rand(N, generator=g, dtype=torch.float64) ** 3 + 0.02
    def window():
        return torch.poisson(2000 * base.expand(8, N), generator=g)
    h1 = torch.stack([window(), window()], 1)  # [8, 2, N]
    old = flashlb.plan(h1, P, D)
    h2 = torch.stack([window(), window()[:, torch.randperm(N, generator=g)]], 1)
    free = flashlb.plan(h2, P, D, previous=old, move_penalty=1e-4)
    gated = flashlb.plan(h2, P, D, previous=old, move_penalty=1e-4, layer_penalty=0.1)
    assert int(metrics.moves(old, free)[0]) > 0  # without it the stationary layer is re-placed
    assert metrics.moves(old, gated).tolist()[0] == 0
    assert torch.equal(gated.phy2log[1], free.phy2log[1])
    assert bool(metrics.balance_ratio(gated, h2)[1] < metrics.balance_ratio(old, h2)[1] - 0.1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from([(0, 0.25, 0.5, 0.75, 1.0), (0.1, 0.9)]))
def test_path_points_are_admissible_and_end_where_they_should(inst, fractions):
    h, D, S, seed = inst
    T, L, N = h.shape
    old = random_placement(L, N, D, S, seed + 1)
    fresh = align_to(flashlb.plan(h, D * S, D), old)
    w, ew = normalised(h, D)
    pts = R.path_points(old.phy2log, fresh.phy2log, w, ew, D, fractions)
    assert pts.shape == (L, len(fractions), D * S)
    for k, frac in enumerate(fractions):
        p = Placement.from_phy2log(pts[:, k], N, D).validate()  # devices full, no doubles
        assert int(p.logcnt.min()) >= 1
        changed = metrics.moves(old, fresh)
        got = metrics.moves(old, p)
        if frac == 0:
            assert torch.equal(p.phy2log, old.phy2log)
        if frac == 1:
            assert torch.equal(p.phy2log, fresh.phy2log)
        # a point moves at most what it applies plus the replicas it gives back
        assert bool((got <= changed + N).all())


def test_a_half_way_point_completes_the_changes_that_keep_every_expert_placed():
    # the two changes only work together: either alone leaves an expert without a replica,
    # so the half-way point takes the pending change that places it again (a step forward)
    old = torch.tensor([[0, 1, 2, 3]])
    fresh = torch.tensor([[0, 2, 1, 3]])  # devices {0,1},{2,3} -> {0,2},{1,3}
    h = torch.tensor([[[10.0, 10.0, 1.0, 1.0]]])
    w, ew = normalised(h, 2)
    pts = R.path_points(old, fresh, w, ew, 2, (0.0, 0.5, 1.0))
    for k in range(3):
        p = Placement.from_phy2log(pts[:, k], 4, 2).validate()
        assert int(p.logcnt.min()) == 1
    assert torch.equal(pts[0, 0], old[0]) and torch.equal(pts[0, 2], fresh[0])
    assert torch.equal(pts[0, 1], fresh[0])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(2, 4), st.integers(0, 40), st.integers(0, 1000),
       st.sampled_from([0.0, 1e-3, 0.05]))
def test_budgeted_choice_is_the_exact_knapsack(L, K, budget, seed, penalty):
    g = torch.Generator().manual_seed(seed)
    obj = torch.rand(L, K, generator=g, dtype=torch.float64) + 1
    moves = torch.randint(0, 20, (L, K), generator=g)
    moves[:, 0] = 0
    pick = R.choose(obj, moves, penalty, budget)
    score = obj + (penalty + 1e-9) * moves
    total = lambda ks: sum(float(score[i, k]) for i, k in enumerate(ks))
    spent = lambda ks: sum(int(moves[i, k]) for i, k in enumerate(ks))
    feasible = [ks for ks in itertools.product(range(K), repeat=L) if spent(ks) <= budget]
    best = min(total(ks) for ks in feasible)
    assert spent(pick.tolist()) <= budget
    assert total(pick.tolist()) <= best + 1e-12


def test_budget_goes_where_a_move_gains_most_across_layers():
    # layer 0: 10 moves gain 0.5; layer 1: 10 moves gain 0.05; budget for one of them
    obj = torch.tensor([[1.5, 1.0], [1.05, 1.0]], dtype=torch.float64)
    moves = torch.tensor([[0, 10], [0, 10]])
    assert R.choose(obj, moves, 0.0, 10).tolist() == [1, 0]
    obj = torch.tensor([[1.05, 1.0], [1.5, 1.0]], dtype=torch.float64)
    assert R.choose(obj, moves, 0.0, 10).tolist() == [0, 1]


def hot_cold_swap(seed=0, L=2, N=64, D=16, S=5, T=8, G=8):
    """A window, then the same experts with their G hottest and G coldest traded."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(L, N, generator=g, dtype=torch.float64).exp() ** 1.5
    h1 = torch.poisson(base.expand(T, L, N) * 200, generator=g)
    swapped = base.clone()
    for layer in range(L):
        order = base[layer].argsort(descending=True)
        hot, cold = order[:G], order[-G:]
        swapped[layer, hot], swapped[layer, cold] = base[layer, cold], base[layer, hot]
    h2 = torch.poisson(swapped.expand(T, L, N) * 200, generator=g)
    return h1, h2, D * S, D


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replan_leaves_the_old_basin_after_hot_experts_swap(seed):
    # The search from the placement in service alone stays 5-24% of the way short of the
    # fresh plan's balance here; weighing the fresh plan and the points between closes it.
    h1, h2, P, D = hot_cold_swap(seed)
    old = flashlb.plan(h1, P, D)
    r_fresh = metrics.balance_ratio(flashlb.plan(h2, P, D), h2)
    r_old = metrics.balance_ratio(old, h2)
    for penalty in (1e-3, 3e-3):
        new = flashlb.plan(h2, P, D, previous=old, move_penalty=penalty)
        r_new = metrics.balance_ratio(new, h2)
        assert bool((r_new - r_fresh <= 0.04 * (r_old - r_fresh)).all())
        assert bool((metrics.moves(old, new) > 0).all())


def test_max_moves_caps_the_total_and_zero_keeps_everything():
    h1, h2, P, D = hot_cold_swap(1)
    old = flashlb.plan(h1, P, D)
    free = flashlb.plan(h2, P, D, previous=old, move_penalty=1e-4)
    need = int(metrics.moves(old, free).sum())
    assert need > 0
    for budget in (0, 3, need // 2, need):
        new = flashlb.plan(h2, P, D, previous=old, move_penalty=1e-4, max_moves=budget).validate()
        assert int(metrics.moves(old, new).sum()) <= budget
    assert torch.equal(flashlb.plan(h2, P, D, previous=old, max_moves=0).phy2log, old.phy2log)
    half = flashlb.plan(h2, P, D, previous=old, move_penalty=1e-4, max_moves=need // 2)
    assert metrics.balance_ratio(half, h2).mean() < metrics.balance_ratio(old, h2).mean()


def test_bad_previous_and_budgets_raise_before_any_work():
    h = torch.rand(4, 2, 16, dtype=torch.float64)
    old = flashlb.plan(h, 24, 4)
    for kwargs, match in (
            (dict(previous=old, max_moves=float("nan")), "max_moves"),
            (dict(previous=old, max_moves=-1), "max_moves"),
            (dict(previous=old, max_moves=2.0), "max_moves"),
            (dict(previous=old, move_penalty=-0.1), "move_penalty"),
            (dict(previous=old, move_penalty=float("nan")), "move_penalty"),
            (dict(previous=old, layer_penalty=-0.01), "layer_penalty"),
            (dict(previous=old, layer_penalty=float("inf")), "layer_penalty"),
            (dict(previous=old, layer_penalty=True), "layer_penalty"),
            (dict(algorithm="default", layer_penalty=0.1), "layer_penalty"),
            (dict(previous=old, refresh_penalty=float("nan")), "refresh_penalty"),
            (dict(previous=old, refresh_penalty=-1e-4), "refresh_penalty"),
            (dict(algorithm="default", refresh_penalty=1e-4), "refresh_penalty"),
            (dict(max_moves=5), "needs previous"),
            (dict(previous=flashlb.plan(h, 32, 4)), "previous must place"),
            (dict(previous=flashlb.plan(h[:, :1], 24, 4)), "previous must place")):
        with pytest.raises(ValueError, match=match):
            flashlb.plan(h, 24, 4, **kwargs)
    missing = old.phy2log.clone()
    missing[0][missing[0] == 3] = 4  # expert 3 is no longer placed
    with pytest.raises(ValueError, match="expert 3 of layer 0 has no replica"):
        flashlb.plan(h, 24, 4, previous=Placement.from_phy2log(missing, 16, 4))
    with pytest.raises(ValueError, match="move_penalty"):
        flashlb.plan(h, 24, 4, previous=old, move_penalty="1e-3")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_counts_point_takes_the_fresh_counts_with_few_moves(inst):
    h, D, S, seed = inst
    T, L, N = h.shape
    old = random_placement(L, N, D, S, seed + 1)
    fresh = align_to(flashlb.plan(h, D * S, D), old)
    w, ew = normalised(h, D)
    pt = Placement.from_phy2log(R.counts_point(old.phy2log, fresh.phy2log, w, ew, D), N, D)
    pt.validate()
    assert int(pt.logcnt.min()) >= 1
    # each changed slot hands a replica from an expert that loses one to one that gains one
    changed = (pt.logcnt - old.logcnt).abs().sum(1) // 2
    assert torch.equal(metrics.moves(old, pt), changed)
    lose = old.logcnt > fresh.logcnt
    gain = old.logcnt < fresh.logcnt
    assert bool((pt.logcnt[lose] <= old.logcnt[lose]).all() and (pt.logcnt[lose] >= fresh.logcnt[lose]).all())
    assert bool((pt.logcnt[gain] >= old.logcnt[gain]).all() and (pt.logcnt[gain] <= fresh.logcnt[gain]).all())
    unchanged = old.logcnt == fresh.logcnt
    assert torch.equal(pt.logcnt[unchanged], old.logcnt[unchanged])


def test_a_polished_point_comes_back_aligned_to_the_placement_in_service():
    # Found by the fuzzer: without a move penalty a point the local search improved kept its
    # devices in another order than the placement in service, so it moved more slots than the
    # same loads needed.
    h = torch.zeros(1, 2, 13, dtype=torch.float64)
    h[0, 1, [3, 6, 8, 10]] = torch.tensor([2197.0, 1000.0, 1.0, 1.0], dtype=torch.float64)
    old = flashlb.plan(h, 15, 5)
    h2 = torch.rand(1, 2, 13, generator=torch.Generator().manual_seed(842), dtype=torch.float64)
    for previous in (old, flashlb.plan(h, 15, 5, algorithm="default")):
        new = flashlb.plan(h2, 15, 5, previous=previous, move_penalty=0.0)
        assert torch.equal(metrics.moves(previous, new),
                           metrics.moves(previous, align_to(new, previous)))


def test_threads_do_not_change_the_plan():
    # The search's problems are handed to threads one at a time: which thread takes which
    # must not show in the result (each problem's seed is its own).
    h = swap_trace(12, 6, 32, group_size=4, seed=5)
    old = flashlb.plan(h[:6], 40, 8)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out.append((flashlb.plan(h[6:], 40, 8).phy2log,
                        flashlb.plan(h[6:], 40, 8, previous=old, move_penalty=1e-3).phy2log))
    finally:
        torch.set_num_threads(threads)
    for fresh, near in out[1:]:
        assert torch.equal(fresh, out[0][0]) and torch.equal(near, out[0][1])
