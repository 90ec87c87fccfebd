# python -m pytest -q tests/test_grpo.py  — group advantages, loss weights and the PPO dual-clip loss.
import math

import pytest
import torch

from dynamo.grpo import group_advantages, ppo_loss, token_weights


def test_unequal_groups_use_their_own_mean_and_bessel_std():
    rewards = torch.tensor([1., -1., -1., 1., 1., 1., -1., 1., -1.])
    pidx = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    # reorder rows: grouping must follow prompt_index, not position
    perm = torch.tensor([4, 0, 8, 2, 6, 1, 3, 7, 5])
    adv = group_advantages(rewards[perm], pidx[perm])
    adv = torch.empty_like(adv).scatter_(0, perm, adv)
    # group 0: [1,-1,-1], mean -1/3, unbiased std = sqrt(((4/3)^2 + 2 (2/3)^2) / 2) = sqrt(4/3)
    s0 = math.sqrt(4 / 3)
    assert adv[:3].tolist() == pytest.approx([(4 / 3) / s0, (-2 / 3) / s0, (-2 / 3) / s0], abs=1e-5)
    assert adv[3:6].tolist() == [0.0, 0.0, 0.0]  # all correct: no signal
    assert adv[6:].tolist() == pytest.approx([-(2 / 3) / s0, (4 / 3) / s0, -(2 / 3) / s0], abs=1e-5)


def test_group_sizes_two_and_one():
    adv = group_advantages(torch.tensor([1., -1., 1.]), torch.tensor([5, 5, 9]))
    # size 2: mean 0, unbiased std sqrt(2); a lone rollout has no group variance -> 0
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), 0.0], abs=1e-5)


def test_all_equal_groups_are_zero():
    assert group_advantages(torch.full((6,), -1.0), torch.tensor([0, 0, 1, 1, 1, 1])).abs().sum() == 0


def test_loss_matches_hand_computation():
    # one token each: ratios 1.5 (A=+1, clipped at 1.28), 0.5 (A=-1, clipped at 0.8),
    # 20 (A=-1: PPO gives 20, dual clip caps at c=10), 1.0 (A=+2), padding ignored
    logp = torch.log(torch.tensor([[1.5], [0.5], [20.0], [1.0], [3.0]]))
    old = torch.zeros(5, 1)
    adv = torch.tensor([[1.0], [-1.0], [-1.0], [2.0], [5.0]])
    mask = torch.tensor([[1.], [1.], [1.], [1.], [0.]])
    w = token_weights(mask, torch.arange(5), "token_mean")
    loss, stats = ppo_loss(logp, old, adv, w, eps_low=0.2, eps_high=0.28, dual_clip=10.0)
    per_token = [-1.28, 0.8, 10.0, -2.0]  # max(-A r, -A clip(r)), then min(., -A c) for A < 0
    assert loss.item() == pytest.approx(sum(per_token) / 4, rel=1e-5)
    # rows 0 and 1 take the clipped branch; row 2 (A < 0, r above the clip) keeps the unclipped
    # PPO term, which the dual clip then caps
    assert stats["clip_frac"] == pytest.approx(2 / 4)
    assert stats["dual_clip_frac"] == pytest.approx(1 / 4)


def test_loss_gradient_is_independent_of_micro_batch_split():
    torch.manual_seed(0)
    logp = torch.randn(8, 5, requires_grad=True)
    old = logp.detach() + 0.1 * torch.randn(8, 5)
    adv = torch.randn(8, 1).expand(8, 5)
    mask = (torch.rand(8, 5) > 0.3).float()
    pidx = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    for agg in ("token_mean", "prompt_mean"):
        w = token_weights(mask, pidx, agg)
        assert w.sum().item() == pytest.approx(1.0)
        whole = torch.autograd.grad(ppo_loss(logp, old, adv, w, eps_low=.2, eps_high=.28, dual_clip=10)[0], logp)[0]
        parts = torch.zeros_like(logp)
        for rows in ([0, 1, 2], [3, 4, 5, 6, 7]):
            r = torch.tensor(rows)
            loss = ppo_loss(logp[r], old[r], adv[r], w[r], eps_low=.2, eps_high=.28, dual_clip=10)[0]
            parts += torch.autograd.grad(loss, logp)[0]
        assert torch.allclose(whole, parts, atol=1e-7)


def test_prompt_mean_weighs_each_prompt_equally():
    mask = torch.tensor([[1., 1., 1.], [1., 0., 0.], [1., 1., 0.]])
    w = token_weights(mask, torch.tensor([0, 0, 1]), "prompt_mean")
    assert w[:2].sum().item() == pytest.approx(0.5) and w[2].sum().item() == pytest.approx(0.5)
