import random
import time

import pytest
import torch

import flashlb
from flashlb import Placement, metrics
from flashlb.solvers.exact import exact_plan
from flashlb.synthetic import small_instance

from conftest import judge as objective, load_real, real_files


def test_seed_example_reaches_the_exact_optimum(seed_hotness):
    exact, obj = exact_plan(seed_hotness, 16, 8)
    assert metrics.device_loads(exact, seed_hotness).max().item() == pytest.approx(590 / 3)
    p = flashlb.plan(seed_hotness, 16, 8).validate()
    assert metrics.device_loads(p, seed_hotness).max().item() == pytest.approx(590 / 3)


# Instances of the broad family that once showed a gap (44, 901, 1042: above 1%; 1019, 2497:
# about 0.1%) - smoothing steering the search past the best peaks, the best counts ranked low
# by the packing bound, a basin whose every neighbour is worse: kept beside plain seeds.
HARD_SEEDS = [44, 901, 1019, 1042, 2497]


@pytest.mark.parametrize("seeds", [range(120), HARD_SEEDS], ids=["seeds 0-119", "hard seeds"])
def test_small_instances_match_the_exact_solver(seeds):
    # up to 6 devices, 1-4 slots per device, 1-4 episodes, skewed, heavy-tailed, one-hot,
    # tied, integer loads and idle episodes; the solver reaches the optimum on all of these
    # (worst 0.33% over seeds 0-2999, bench/solver.py), so the tolerances sit close to zero
    gaps = []
    for seed in seeds:
        h, P, D, kind = small_instance(seed)
        _, best = exact_plan(h, P, D)
        got = objective(flashlb.plan(h, P, D).validate(), h).item()
        assert got >= best.item() - 1e-9, (seed, kind)  # the oracle is a true optimum
        if best.item() > 0:
            gaps.append(got / best.item() - 1)
    assert max(gaps) <= 1e-3
    assert sum(gaps) / len(gaps) <= 1e-4


def test_exact_solver_beats_brute_force_never():
    # exhaustive check of the oracle itself on tiny cases: all placements enumerated
    import itertools

    g = torch.Generator().manual_seed(1)
    for N, D, S in [(3, 2, 2), (4, 2, 3), (2, 3, 1)]:
        if D * S < N:
            continue
        h = torch.rand(1, N, generator=g, dtype=torch.float64) * 10
        _, best = exact_plan(h, D * S, D)
        brute = float("inf")
        for phy in itertools.product(range(N), repeat=D * S):
            if len(set(phy)) < N:
                continue
            devs = [phy[d * S:(d + 1) * S] for d in range(D)]
            if any(len(set(x)) < S for x in devs):
                continue
            p = flashlb.Placement.from_phy2log(torch.tensor([phy]), N, D)
            brute = min(brute, objective(p, h).item())
        assert best.item() == pytest.approx(brute)


def test_deterministic(seed_hotness):
    h = torch.rand(3, 4, 32, generator=torch.Generator().manual_seed(0))
    assert flashlb.plan(h, 48, 8) == flashlb.plan(h, 48, 8)
    assert flashlb.plan(seed_hotness, 16, 8, seed=3) == flashlb.plan(seed_hotness, 16, 8, seed=3)


def test_never_worse_than_the_default_greedy():
    g = torch.Generator().manual_seed(5)
    for T, N, D, S in [(1, 16, 4, 5), (4, 32, 8, 5), (1, 64, 16, 5), (8, 24, 6, 5)]:
        h = torch.rand(T, 3, N, generator=g, dtype=torch.float64) ** 4 * 1000
        ours = objective(flashlb.plan(h, D * S, D).validate(), h)
        base = objective(flashlb.plan(h, D * S, D, algorithm="default"), h)
        assert bool((ours <= base + 1e-12).all())


def _poor_plan(loads, weights, P, D, **_):
    """A valid, duplicate-free and badly balanced placement: experts in id order."""
    N = loads.shape[2]
    return (torch.arange(P) % N).expand(loads.shape[0], P).clone()


@pytest.mark.parametrize("path", ["plan_fresh", "plan_near_previous"])
def test_greedy_fallback_takes_over_where_the_search_is_worse(monkeypatch, path):
    # every path ends in the fallback: a search that returns a poor placement is replaced,
    # layer by layer, by the default greedy's where that one is admissible and better
    from flashlb.solvers import joint

    g = torch.Generator().manual_seed(8)
    h = torch.rand(2, 4, 16, generator=g, dtype=torch.float64) ** 4 * 100
    P, D = 20, 4
    old = flashlb.plan(h, P, D)
    if path == "plan_fresh":
        monkeypatch.setattr(joint, path, lambda loads, weights, *a, **k: _poor_plan(loads, weights, P, D))
    else:  # with the price each layer's moves were chosen at (no move penalty here)
        monkeypatch.setattr(joint, path, lambda loads, weights, *a, **k: (
            _poor_plan(loads, weights, P, D), torch.zeros(loads.shape[0], dtype=torch.float64)))
    kw = {"previous": old} if path == "plan_near_previous" else {}
    got = flashlb.plan(h, P, D, **kw).validate()
    greedy = flashlb.plan(h, P, D, algorithm="default")
    poor = Placement.from_phy2log(_poor_plan(torch.zeros(4, 1, 16), None, P, D), 16, D)
    ok = ~greedy.has_duplicates()
    assert bool(ok.any())
    want = torch.where(ok, torch.minimum(objective(greedy, h), objective(poor, h)), objective(poor, h))
    assert torch.allclose(objective(got, h), want)
    assert bool((objective(got, h) < objective(poor, h) - 1e-9).any())  # it did take over


def test_time_budget_is_anytime():
    h = torch.rand(4, 8, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64) ** 3
    free = objective(flashlb.plan(h, 80, 16), h)
    t = time.perf_counter()
    p = flashlb.plan(h, 80, 16, time_budget=0.3).validate()
    assert time.perf_counter() - t < 0.3 + 0.5
    assert bool((objective(p, h) <= free + 1e-12).all())


def test_recent_episodes_weigh_more():
    # the last episode alone makes expert 3 hot; a short half-life plans for it
    h = torch.tensor([[[8.0, 1, 1, 1, 1, 1]]] * 5 + [[[1.0, 1, 1, 8, 1, 1]]], dtype=torch.float64)
    old = flashlb.plan(h, 8, 4)
    new = flashlb.plan(h, 8, 4, recency_half_life=0.05)
    last = h[-1:]
    assert objective(new, last).item() == pytest.approx(exact_plan(last, 8, 4)[1].item())
    assert objective(old, last).item() > objective(new, last).item()
    assert objective(old, h).item() < objective(new, h).item()


def test_multi_episode_beats_optimising_the_average():
    # two experts alternate being hot: balancing each episode needs them on different devices,
    # which the summed window cannot see (their sum is flat)
    h = torch.tensor([[[10.0, 0, 1, 1]], [[0.0, 10, 1, 1]]] * 4, dtype=torch.float64)
    ours = objective(flashlb.plan(h, 4, 2), h).item()
    avg = objective(flashlb.plan(h.sum(0), 4, 2), h).item()
    assert ours < avg
    assert ours == pytest.approx(objective(exact_plan(h, 4, 2)[0], h).item())


def test_hierarchical_flashlb_keeps_groups_on_nodes():
    h = torch.rand(3, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    p = flashlb.plan(h, 48, 8, num_groups=8, num_nodes=2).validate()
    half = p.phy2log.shape[1] // 2
    for layer in range(3):
        n0 = {e // 4 for e in p.phy2log[layer, :half].tolist()}
        n1 = {e // 4 for e in p.phy2log[layer, half:].tolist()}
        assert not n0 & n1 and len(n0) == len(n1) == 4


def test_joint_search_checks_its_arguments():
    from flashlb.solvers.search import joint_search

    w = torch.ones(1, 1, 4, dtype=torch.float64)
    ew = torch.ones(1, 1, dtype=torch.float64)
    ones = torch.ones(1, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="counts must be Long"):
        joint_search(w, ew, counts=ones.int(), num_devices=2, slots_per_device=2)
    with pytest.raises(ValueError, match="counts must sum"):
        joint_search(w, ew, counts=ones * 2, num_devices=2, slots_per_device=2)
    # one start, stated: counts and a start placement together are refused, not half-ignored
    with pytest.raises(ValueError, match="exactly one of counts"):
        joint_search(w, ew, counts=ones, init_slots=torch.tensor([[0, 1, 2, 3]]),
                     num_devices=2, slots_per_device=2)
    with pytest.raises(ValueError, match="exactly one of counts"):
        joint_search(w, ew, num_devices=2, slots_per_device=2)
    with pytest.raises(ValueError, match="time_limit"):
        joint_search(w, ew, counts=ones, num_devices=2, slots_per_device=2, time_limit=0)
    with pytest.raises(ValueError, match="time_limit"):
        torch.ops.flashlb.joint_search(w, ew, counts=ones, num_devices=2, slots_per_device=2,
                                       time_limit=0.0)
    with pytest.raises(RuntimeError, match="positional"):  # keyword-only past the loads
        torch.ops.flashlb.joint_search(w, ew, ones, None, None, 2, 2, 0.0, 0.0, 0, 0, None)


def test_joint_search_refuses_a_start_that_is_no_placement():
    """A start placement leaving an expert without a replica (or with more than D) used to
    come back as it was, with a peak that ignored that expert's load, or to fail with an
    'internal error' once perturbed: it is refused like the same counts would be."""
    from flashlb.solvers.search import joint_search

    w = torch.ones(1, 1, 4, dtype=torch.float64)
    ew = torch.ones(1, 1, dtype=torch.float64)
    for start, S in (([0, 0, 0, 0], 2), ([0, 1, 2, 2], 2), ([0, 0, 0, 1, 2, 3], 3)):
        for rounds in (0, 20):  # [0, 0, 0, 1, 2, 3] on 2 devices: 3 replicas of expert 0
            with pytest.raises(ValueError, match="init_slots"):
                joint_search(w, ew, init_slots=torch.tensor([start]), num_devices=2, slots_per_device=S,
                             perturb_rounds=rounds)
    # one expert twice on a device is a placement the default greedy makes: still a start
    r = joint_search(w, ew, init_slots=torch.tensor([[0, 0, 1, 2, 3, 1, 2, 3]]), num_devices=2,
                     slots_per_device=4, perturb_rounds=5)
    assert r.counts.tolist() == [[2, 2, 2, 2]]


def test_joint_search_named_result():
    from flashlb.solvers.search import joint_search

    w = torch.tensor([[[4.0, 2.0, 1.0, 1.0]]], dtype=torch.float64)  # device average 2 over 4 slots
    ew = torch.ones(1, 1, dtype=torch.float64)
    r = joint_search(w, ew, counts=torch.tensor([[1, 1, 1, 1]]), num_devices=2, slots_per_device=2)
    assert r.slots.shape == (1, 4) and r.counts.tolist() == [[1, 1, 1, 1]]
    assert r.peak_ratio.item() == pytest.approx(5.0)  # {4, 1} | {2, 1}
    assert r.moves.tolist() == [0]
    # from a start placement, with that placement as the anchor: its own counts are used
    start = torch.tensor([[0, 1, 2, 3]])
    r = joint_search(w, ew, init_slots=start, anchor=start, num_devices=2, slots_per_device=2,
                     move_penalty=0.01)
    assert r.counts.tolist() == [[1, 1, 1, 1]] and r.peak_ratio.item() == pytest.approx(5.0)
    assert r.moves.item() == 2 and r.objective.item() >= r.peak_ratio.item() + 0.02 - 1e-12


@pytest.mark.parametrize("P, D, target", [(288, 32, 1.002), (320, 64, 1.006)])
def test_real_statistics_targets(P, D, target):
    files = real_files()
    if not files:
        pytest.skip("the shared DeepSeek-V3 statistics (../shared/data) are not present")
    h = load_real(files[-1])
    ours = metrics.balance_ratio(flashlb.plan(h, P, D).validate(), h).mean().item()
    base = metrics.balance_ratio(flashlb.plan(h, P, D, algorithm="default"), h).mean().item()
    assert ours <= target and ours < base


def _bound_and_optimum(h, counts, D):
    """packing_bound of fixed counts and the exact optimum with those counts (one layer)."""
    from flashlb.objective import episode_weights, normalise_episodes
    from flashlb.solvers.allotment import packing_bound
    from flashlb.solvers.exact import exact_layer, scale_episodes

    h = h.to(torch.float64)
    w, ew = normalise_episodes(h.unsqueeze(1), D, episode_weights(h.shape[0]))
    bound = packing_bound(w, ew, torch.tensor([[counts]]), D).item()
    loads, weights = scale_episodes(h.tolist(), [1.0] * h.shape[0], D)
    best, _ = exact_layer(loads, weights, sum(counts), D, counts=counts)
    return bound, best


def test_packing_bound_counter_example_with_three_slots_per_device():
    # the pairing of heads with one tail each claimed 1.1439 here; a placement reaches 1.1212
    bound, best = _bound_and_optimum(torch.tensor([[61.0, 33, 18, 1, 27, 58]]), [2, 2, 2, 1, 1, 1], 3)
    assert best == pytest.approx(74 / 66)
    assert bound <= best + 1e-12


def test_packing_bound_never_exceeds_the_optimum():
    # fixed random counts, 2-4 slots per device, several episodes, skewed and tied loads
    rnd, g = random.Random(3), torch.Generator().manual_seed(3)
    tight = 0
    for _ in range(60):
        D, S = rnd.choice([2, 3, 4]), rnd.choice([2, 3, 4])
        if D * S > 12:
            S = 12 // D
        P = D * S
        N = rnd.randint(max(S, -(-P // D)), P)
        T = rnd.choice([1, 2, 3])
        h = (torch.rand(T, N, generator=g, dtype=torch.float64) ** rnd.choice([1, 3, 6]) * 60).round() + rnd.choice([0, 1])
        counts = [1] * N
        for _ in range(P - N):
            counts[rnd.choice([e for e in range(N) if counts[e] < D])] += 1
        bound, best = _bound_and_optimum(h, counts, D)
        assert bound <= best + 1e-9, (h.tolist(), counts, D)
        tight += bound >= best - 1e-9
    assert tight >= 10  # a bound, and a useful one: it meets the optimum on many instances


def test_all_allotments_enumerates_capped_compositions():
    from flashlb.solvers.allotment import all_allotments

    c = all_allotments(3, 5, 2, limit=100)
    assert sorted(map(tuple, c.tolist())) == [(1, 2, 2), (2, 1, 2), (2, 2, 1)]
    assert all_allotments(8, 16, 8, limit=100) is None


def test_count_refinement_starts_no_step_after_the_deadline():
    # a hierarchical plan of DeepSeek-V3's size runs this refinement on 232 small problems,
    # seconds of work that ignored time_budget; past its deadline it returns the counts as given
    from flashlb.objective import allot_replicas, episode_weights, normalise_episodes
    from flashlb.solvers.allotment import packing_bound, refine_counts

    h = torch.rand(1, 32, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64) ** 4
    w, ew = normalise_episodes(h, 8, episode_weights(1))  # [32, 1, 64] problems of 72 slots
    base = allot_replicas(w[:, 0], 72, 8)
    free = refine_counts(w, ew, base, 8)
    assert bool((free != base).any())  # the refinement does change these counts
    bound = packing_bound(w, ew, torch.stack([base, free], 1), 8)
    assert bool((bound[:, 1] <= bound[:, 0] + 1e-12).all())
    assert torch.equal(refine_counts(w, ew, base, 8, deadline=time.perf_counter() - 1), base)
    assert torch.equal(refine_counts(w, ew, base, 8, deadline=time.perf_counter() + 3600), free)


def test_time_limit_gives_every_problem_its_share():
    # endless perturbation rounds and a limit: with one deadline shared by all, the first
    # problem of each thread took the whole time and the others never searched at all
    from flashlb.objective import episode_weights, normalise_episodes
    from flashlb.solvers.search import joint_search

    h = torch.rand(4, 1, 48, generator=torch.Generator().manual_seed(6), dtype=torch.float64) ** 3
    w, ew = normalise_episodes(h, 8, episode_weights(4))
    counts = torch.tensor([[1] * 16 + [2] * 32])
    once = joint_search(w, ew, counts=counts, num_devices=8, slots_per_device=10)
    B = 6
    r = joint_search(w.expand(B, -1, -1).contiguous(), ew.expand(B, -1).contiguous(),
                     counts=counts.expand(B, -1).contiguous(), num_devices=8, slots_per_device=10,
                     perturb_rounds=10**9, time_limit=0.6)
    # every problem finished at least its first local search (and used its share on rounds)
    assert bool((r.peak_ratio <= once.peak_ratio + 1e-12).all()), r.peak_ratio


def test_search_effort_is_judged_on_whole_layers_and_the_call(monkeypatch):
    """The small-problem extras (here: the count refinement) run for a few small layers, also
    when they are split per node; not for the node problems of a large layer, which are
    many, nor for a whole model of small layers."""
    from flashlb.solvers import joint

    calls = []
    real = joint.refine_counts

    def counting(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(joint, "refine_counts", counting)
    gen = torch.Generator().manual_seed(3)
    large = torch.rand(2, 256, generator=gen, dtype=torch.float64) ** 4
    flashlb.plan(large, 288, 32, num_groups=8, num_nodes=4).validate()
    assert calls == []
    model = torch.rand(48, 128, generator=gen, dtype=torch.float64) ** 4  # 48 x 144 slots
    flashlb.plan(model, 144, 8).validate()
    assert calls == []
    small = torch.rand(2, 16, generator=gen, dtype=torch.float64) ** 4
    flashlb.plan(small, 32, 8, num_groups=4, num_nodes=2).validate()
    assert calls == [(4, 1, 8)]  # 2 layers x 2 nodes, one window, 8 experts per node
    flashlb.plan(model[:4], 144, 8).validate()
    assert calls[1:] == [(4, 1, 128)]
