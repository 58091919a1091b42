"""Two prices for a move (refresh_penalty, layer_penalty) over the edges: hierarchical plans,
a placement in service that holds an expert twice on a device, budgets, determinism."""

import itertools

import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import flashlb
from flashlb import Balancer, Placement, align_to, metrics
from flashlb.solvers import replan as R

from test_replan import window_objective


def doubled(placement: Placement, layer: int) -> Placement | None:
    """``placement`` with one expert held twice on a device of ``layer`` (every expert still
    placed), or None where no such swap exists."""
    phy = placement.phy2log.clone()
    S = placement.slots_per_device
    cnt = placement.logcnt[layer]
    row = phy[layer].tolist()
    for a, b in itertools.permutations(range(len(row)), 2):
        e = row[a]
        if cnt[e] < 2 or a // S == b // S or row[b] != e:
            continue
        for c in range((a // S) * S, (a // S + 1) * S):
            f = row[c]
            if f != e:  # e from b joins its twin on a's device; f takes b
                phy[layer, c], phy[layer, b] = e, f
                return Placement.from_phy2log(phy, placement.num_experts, placement.num_devices)
    return None


@st.composite
def cases(draw):
    M = draw(st.sampled_from([1, 1, 2]))
    D = M * draw(st.integers(1, 3))
    S = draw(st.integers(1, 3))
    N = 8 if M > 1 else draw(st.integers(max(2, S), max(2, S, D * S)))
    if D * S < N:
        S = -(-N // D)
    L, T = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(T, L, N, generator=g, dtype=torch.float64) ** 4
    if draw(st.booleans()):
        h[draw(st.integers(0, T - 1))] = 0
    if draw(st.integers(0, 5)) == 0:
        h.zero_()
    kw = dict(num_groups=4, num_nodes=M) if M > 1 else {}
    old = flashlb.plan(torch.rand(L, N, generator=g, dtype=torch.float64) ** 4, D * S, D, **kw)
    if M == 1 and draw(st.booleans()):
        old = doubled(old, 0) or old
    note(f"doubled: {old.has_duplicates().tolist()}")
    return h, D * S, D, kw, old


PRICES = st.sampled_from([(1e-3, 0.0, 4e-4), (0.02, 0.05, 0.0), (0.2, 0.3, None), (0.0, 0.0, 0.0),
                          (1e-3, 0.0, 0.5)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), PRICES)
def test_no_layer_pays_more_than_keeping_or_the_fresh_plan(case, prices):
    h, P, D, kw, old = case
    move, per_layer, refresh = prices
    whole = move if refresh is None else refresh
    new = flashlb.plan(h, P, D, previous=old, move_penalty=move, layer_penalty=per_layer,
                       refresh_penalty=refresh, **kw).validate()
    assert not bool(new.has_duplicates().any())
    fresh = align_to(flashlb.plan(h, P, D, **kw), old, kw.get("num_nodes", 1))  # nodes kept whole

    def cost(p, price):
        moved = metrics.moves(old, p).to(torch.float64)
        return window_objective(p, h) + price * moved + per_layer * (moved > 0).to(torch.float64)

    # the cheaper of the two prices: a lower bound on what ours is charged, whichever it is
    ours = cost(new, min(move, whole))
    sound = ~old.has_duplicates()  # a layer holding an expert twice must move
    assert bool((ours <= cost(old, move) + 1e-9)[sound].all())
    assert bool((ours <= cost(fresh, whole) + 1e-9).all())
    again = flashlb.plan(h, P, D, previous=old, move_penalty=move, layer_penalty=per_layer,
                         refresh_penalty=refresh, **kw)
    assert torch.equal(again.phy2log, new.phy2log)  # deterministic


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), PRICES, st.integers(0, 6))
def test_a_budget_holds_with_both_prices(case, prices, budget):
    h, P, D, kw, old = case
    move, per_layer, refresh = prices
    new = flashlb.plan(h, P, D, previous=old, move_penalty=move, layer_penalty=per_layer,
                       refresh_penalty=refresh, max_moves=budget, **kw).validate()
    sound = ~old.has_duplicates()
    assert int(metrics.moves(old, new)[sound].sum()) <= budget


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(2, 4), st.integers(0, 30), st.integers(0, 1000),
       st.sampled_from([0.0, 1e-3, 0.05]), st.sampled_from([0.0, 0.1]),
       st.sampled_from([None, 0.0, 2e-3]))
def test_budgeted_choice_with_both_prices_is_the_exact_knapsack(L, K, budget, seed, move, per_layer,
                                                                refresh):
    g = torch.Generator().manual_seed(seed)
    obj = torch.rand(L, K, generator=g, dtype=torch.float64) + 1
    moves = torch.randint(0, 15, (L, K), generator=g)
    moves[:, 0] = 0
    pick = R.choose(obj, moves, move, budget, per_layer, refresh)
    price = torch.full((L, K), move, dtype=torch.float64)
    if refresh is not None:
        price[:, 1] = refresh
    score = obj + (price + 1e-9) * moves + per_layer * (moves > 0)
    total = lambda ks: sum(float(score[i, k]) for i, k in enumerate(ks))
    spent = lambda ks: sum(int(moves[i, k]) for i, k in enumerate(ks))
    best = min(total(ks) for ks in itertools.product(range(K), repeat=L) if spent(ks) <= budget)
    assert spent(pick.tolist()) <= budget
    assert total(pick.tolist()) <= best + 1e-12


def test_balancer_state_round_trips_with_the_new_prices(tmp_path):
    h = flashlb.synthetic.regime_trace("swaps-fast", 16, 3, 16, seed=1)
    boot = flashlb.plan(h[:8], 20, 4)
    a = Balancer(20, 4, refresh_penalty=None, layer_penalty=0.01, threshold=1.0)
    up = a.step(h[:8], boot)
    a.save(tmp_path / "b.pt")
    b = Balancer(20, 4, refresh_penalty=None, layer_penalty=0.01, threshold=1.0)
    b.load(tmp_path / "b.pt")
    assert torch.equal(a.step(h[8:], up.placement).placement.phy2log,
                       b.step(h[8:], up.placement).placement.phy2log)
