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


def test_switch_happens_where_asked():
    tr = switch_trace(20, 2, 32, noise=0.0, switch_at=0.5, tokens_per_episode=10**7, seed=0)
    share = tr / tr.sum(-1, keepdim=True)
    step = (share[1:] - share[:-1]).abs().sum(-1).mean(-1)  # [T-1] total variation per step
    assert int(step.argmax()) == 9  # between episode 9 and 10
    assert float(step[9]) > 10 * float(step[:9].max())


@pytest.mark.parametrize("bad", [dict(regime="nope"), dict(group_size=5), dict(skew=float("nan")),
                                 dict(regime="swaps", swap_rate=1.5), dict(num_episodes=0)])
def test_regime_bad_input(bad):
    args = dict(regime="drift", num_episodes=4, num_layers=2, num_experts=32)
    args.update(bad)
    with pytest.raises(ValueError):
        regime_trace(args.pop("regime"), args.pop("num_episodes"), args.pop("num_layers"),
                     args.pop("num_experts"), **args)
