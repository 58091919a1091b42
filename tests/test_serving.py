"""Serving-time tools: drift regimes of synthetic traces, the boot map, the serving replay."""

import pytest
import torch

from flashlb.synthetic import REGIMES, regime_trace, swap_trace, switch_trace


@pytest.mark.parametrize("regime", REGIMES)
def test_regimes_are_reproducible_integer_counts(regime):
    a = regime_trace(regime, 12, 3, 32, seed=4, tokens_per_episode=4096)
    b = regime_trace(regime, 12, 3, 32, seed=4, tokens_per_episode=4096)
    c = regime_trace(regime, 12, 3, 32, seed=5, tokens_per_episode=4096)
    assert a.shape == (12, 3, 32) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a >= 0).all()) and torch.equal(a, a.round())
    # Poisson tokens around the per-episode budget
    assert abs(float(a.sum((0, 2)).mean()) / (12 * 4096) - 1) < 0.05


def _hot_sets(trace, k):
    return trace.topk(k, dim=-1).indices


def test_swaps_change_the_hot_set_and_stationary_does_not():
    # no episode noise: the popularity path shows through the Poisson tokens alone
    sw = swap_trace(40, 4, 64, noise=0.0, swap_rate=0.3, tokens_per_episode=10**7, seed=1)
    st = regime_trace("stationary", 40, 4, 64, noise=0.0, tokens_per_episode=10**7, seed=1)
    def changed(tr):
        hot = _hot_sets(tr, 4).sort(-1).values
        return int((hot[1:] != hot[:-1]).any(-1).sum())
    assert changed(st) == 0
    assert changed(sw) > 0


def test_fast_swaps_are_swaps_twice_as_often():
    fast = regime_trace("swaps-fast", 30, 3, 32, tokens_per_episode=4096, seed=7)
    assert torch.equal(fast, swap_trace(30, 3, 32, tokens_per_episode=4096, seed=7, swap_rate=0.16))
    # its own rate can still be given, as for swaps
    assert torch.equal(regime_trace("swaps-fast", 30, 3, 32, tokens_per_episode=4096, seed=7, swap_rate=0.3),
                       swap_trace(30, 3, 32, tokens_per_episode=4096, seed=7, swap_rate=0.3))


@pytest.mark.parametrize("regime", REGIMES)
def test_a_trace_can_come_with_its_popularity(regime):
    plain = regime_trace(regime, 24, 2, 32, tokens_per_episode=10**6, seed=3)
    counts, shares = regime_trace(regime, 24, 2, 32, tokens_per_episode=10**6, seed=3, with_popularity=True)
    assert torch.equal(plain, counts)  # the same draws: asking for it changes nothing
    assert shares.shape == counts.shape and bool((shares > 0).all())
    torch.testing.assert_close(shares.sum(-1), torch.ones(24, 2, dtype=torch.float64))
    # the observed shares scatter around it by the episode noise (15% in log space) only
    observed = counts / counts.sum(-1, keepdim=True)
    hot = shares > 0.02
    assert float((observed[hot] / shares[hot]).log().std()) < 0.25


def test_switch_happens_where_asked():
    tr = switch_trace(20, 2, 32, noise=0.0, switch_at=0.5, tokens_per_episode=10**7, seed=0)
    share = tr / tr.sum(-1, keepdim=True)
    step = (share[1:] - share[:-1]).abs().sum(-1).mean(-1)  # [T-1] total variation per step
    assert int(step.argmax()) == 9  # between episode 9 and 10
    assert float(step[9]) > 10 * float(step[:9].max())


@pytest.mark.parametrize("bad", [dict(regime="nope"), dict(group_size=5), dict(skew=float("nan")),
                                 dict(regime="swaps", swap_rate=1.5), dict(num_episodes=0),
                                 dict(regime="swaps-fast", num_experts=8), dict(regime="swaps", group_size=32)])
def test_regime_bad_input(bad):
    args = dict(regime="drift", num_episodes=40, num_layers=2, num_experts=32)
    args.update(bad)
    with pytest.raises(ValueError):
        regime_trace(args.pop("regime"), args.pop("num_episodes"), args.pop("num_layers"),
                     args.pop("num_experts"), **args)
    # one group has none to swap with; without swaps it is a trace like any other
    assert swap_trace(4, 2, 8, swap_rate=0.0).shape == (4, 2, 8)


# ---------------------------------------------------------------------- boot map and replay
import flashlb  # noqa: E402
from flashlb import metrics  # noqa: E402
from flashlb.redeploy.simulate import POLICIES  # noqa: E402


def test_boot_placement_is_experts_in_order_plus_copies():
    p = flashlb.boot_placement(3, 16, 24, 4)
    p.validate()
    assert torch.equal(p.phy2log[1], torch.arange(24) % 16)
    assert p.logcnt[0].tolist() == [2] * 8 + [1] * 8
    assert not bool(p.has_duplicates().any())
    with pytest.raises(ValueError, match="num_physical"):
        flashlb.boot_placement(3, 16, 12, 4)


def test_simulate_follows_the_serving_protocol():
    tr = regime_trace("swaps", 26, 3, 32, tokens_per_episode=4096, seed=2, swap_rate=0.3)
    res = flashlb.simulate(tr, 48, 8, cycle=4, window=8)
    assert tuple(res) == POLICIES
    for r in res.values():  # (26 - 8) // 4 = 4 decisions, each judged on the next 4 episodes
        assert r.ratio.shape == (4, 4) and r.moves.shape == (4,) and r.seconds.shape == (4,)
        assert r.mean_ratio >= 1
    assert res["static"].moves[1:].sum() == 0 and res["static"].moves[0] > 0
    # the clairvoyant plan is judged on the episodes it was planned on
    assert res["clairvoyant"].mean_ratio < res["fresh"].mean_ratio
    # a fresh plan judged on the next window, recomputed here by hand for the first decision
    first = flashlb.align_to(flashlb.plan(tr[:8], 48, 8), flashlb.boot_placement(3, 32, 48, 8))
    ratio = metrics.peak_avg_ratio(metrics.device_loads(first, tr[8:12])).mean(-1)
    torch.testing.assert_close(res["fresh"].ratio[0], ratio)
    assert int(res["fresh"].moves[0]) == int(metrics.moves(flashlb.boot_placement(3, 32, 48, 8), first).sum())


def test_simulate_aligns_the_default_greedy():
    tr = regime_trace("drift", 24, 3, 32, tokens_per_episode=4096, seed=3, drift=0.3)
    res = flashlb.simulate(tr, 48, 8, cycle=8, window=8, policies=("default",))
    boot = flashlb.boot_placement(3, 32, 48, 8)
    unaligned, prev = 0, boot
    for c in range(2):
        new = flashlb.plan(tr[8 * c:8 * c + 8].sum(0), 48, 8, algorithm="default")
        unaligned += int(metrics.moves(prev, new).sum())
        prev = new
    assert res["default"].total_moves < unaligned


def test_simulate_reads_steps_in_episodes_and_checks_input():
    steps = regime_trace("stationary", 48, 2, 16, tokens_per_episode=512, seed=1)
    a = flashlb.simulate(steps, 24, 4, episode_len=4, cycle=2, window=4, policies=("fresh",))
    b = flashlb.simulate(steps.view(12, 4, 2, 16).sum(1), 24, 4, cycle=2, window=4, policies="fresh")
    torch.testing.assert_close(a["fresh"].ratio, b["fresh"].ratio)
    with pytest.raises(ValueError, match="window"):
        flashlb.simulate(steps[:10], 24, 4, cycle=8, window=8)
    with pytest.raises(ValueError, match="policies"):
        flashlb.simulate(steps, 24, 4, policies=("cherry-pick",))
    with pytest.raises(ValueError, match="cycle"):
        flashlb.simulate(steps, 24, 4, cycle=0)
