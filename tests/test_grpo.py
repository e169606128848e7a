"""Flow-GRPO and LongCat-GRPO: exact math on small tensors, then the tiny Wan pipeline (ODE reproduction, on-policy
ratio 1, proofs of effect against an analytic reward, the recipe under `accelerate launch --num_processes 2`)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from helpers.run import accelerate_cpu, offline_env, run_python

from descore_plugin.integrations import grpo, wan
from descore_plugin.integrations.flow_sde import (
    clipped_policy_loss,
    gaussian_log_prob,
    longcat_loss_weights,
    longcat_step_kl,
    mean_kl,
    noise_scale,
    sde_step,
)
from descore_plugin.integrations.grpo import (
    AdvantageError,
    WanGRPOConfig,
    fill_missing_rewards,
    group_advantages_population,
    max_group_std_advantages,
    sde_masks,
)
from descore_plugin.rewards.contract import reward_set
from descore_plugin.testing import tiny_wan

# ---------------------------------------------------------------- the SDE step


def euler_grid(steps=6, shift=3.0):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler


def test_noise_scale_zero_is_the_euler_scheduler_step_bit_for_bit():
    torch.manual_seed(0)
    scheduler = euler_grid()
    sigmas = scheduler.sigmas
    x = torch.randn(2, 16, 3, 4, 4)
    for i, timestep in enumerate(scheduler.timesteps):
        v = torch.randn_like(x)
        expected = scheduler.step(v, timestep, x, return_dict=False)[0]
        step = sde_step(v, x, sigmas[i], sigmas[i + 1], noise_scale=0.0)
        assert torch.equal(step.prev_sample, expected), f"step {i}"
        assert torch.equal(step.mean, expected)
        x = expected


def test_sqrt_noise_scale_at_t_one_uses_the_second_sigma_like_flow_grpo():
    sigmas = euler_grid().sigmas
    cap = float(sigmas[1])
    s = noise_scale(torch.tensor([1.0, 0.5]), sigmas, "sqrt", 0.7)
    assert torch.allclose(s, torch.tensor([0.7 * math.sqrt(1 / (1 - cap)), 0.7]), rtol=1e-6)


def test_wan_linear_schedule_one_step_exact_values():
    """flow_grpo's Wan trainer: std_dev_t = s_min + (s_max - s_min) t with s_max = sigmas[1], s_min = sigmas[-1];
    mean = x (1 + std_dev_t^2 dt / (2t)) + v (1 + std_dev_t^2 (1 - t) / (2t)) dt; step std = std_dev_t sqrt(-dt)."""
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    t, t_next = 0.5, 0.2
    x, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 3.0]])
    s = noise_scale(t, sigmas, "linear", 1.0)
    assert s.item() == pytest.approx(0.0 + (0.8 - 0.0) * 0.5)  # 0.4: grows linearly with t
    step = sde_step(v, x, t, t_next, noise_scale=s, generator=torch.Generator().manual_seed(0))
    # by hand: s = 0.4, dt = -0.3: x * (1 - 0.16 * 0.3 / 1) + v * (1 + 0.16 * 0.5 / 1) * (-0.3)
    assert step.mean.tolist()[0] == pytest.approx(
        [1.0 * 0.952 + 0.5 * 1.08 * -0.3, -2.0 * 0.952 + 3.0 * 1.08 * -0.3], abs=1e-6
    )
    assert step.std.item() == pytest.approx(0.4 * math.sqrt(0.3), rel=1e-6)
    assert noise_scale(torch.tensor([1.0, 0.0]), sigmas, "linear", 2.0).tolist() == pytest.approx([1.6, 0.0])


def test_sde_mean_and_std_match_the_formula_on_numbers():
    x = torch.tensor([[1.0, -2.0]])
    v = torch.tensor([[0.5, 3.0]])
    t, t_next, a = 0.6, 0.4, 0.7
    s = a * math.sqrt(t / (1 - t))
    dt = t_next - t
    mean = [
        xi * (1 + s * s * dt / (2 * t)) + vi * (1 + s * s * (1 - t) / (2 * t)) * dt
        for xi, vi in zip([1.0, -2.0], [0.5, 3.0])
    ]
    step = sde_step(
        v,
        x,
        t,
        t_next,
        noise_scale=noise_scale(t, torch.tensor([1.0, 0.99]), "sqrt", a),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(step.mean, torch.tensor([mean]), atol=1e-6)
    assert step.std.item() == pytest.approx(s * math.sqrt(-dt), rel=1e-6)
    noise = torch.randn(1, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(step.prev_sample, step.mean + step.std * noise, atol=1e-6)


def test_log_prob_equals_hand_computed_gaussian_density():
    x = torch.tensor([[0.3, -1.2, 2.0]])
    mean = torch.tensor([[0.0, -1.0, 1.5]])
    std = torch.tensor(0.5)
    by_hand = (
        sum(
            math.log(1 / (0.5 * math.sqrt(2 * math.pi)) * math.exp(-((xi - mi) ** 2) / (2 * 0.25)))
            for xi, mi in zip([0.3, -1.2, 2.0], [0.0, -1.0, 1.5])
        )
        / 3
    )
    assert gaussian_log_prob(x, mean, std).item() == pytest.approx(by_hand, abs=1e-6)


def test_log_prob_of_a_stored_step_recomputed_gives_ratio_exactly_one():
    torch.manual_seed(0)
    x, v = torch.randn(3, 16, 2, 4, 4), torch.randn(3, 16, 2, 4, 4)
    first = sde_step(v, x, 0.8, 0.6, noise_scale=0.7 * math.sqrt(0.8 / 0.2))
    again = sde_step(v, x, 0.8, 0.6, noise_scale=0.7 * math.sqrt(0.8 / 0.2), prev_sample=first.prev_sample)
    old = gaussian_log_prob(first.prev_sample, first.mean, first.std)
    new = gaussian_log_prob(again.prev_sample, again.mean, again.std)
    _, ratio = clipped_policy_loss(new, old, torch.ones(3), clip_range=1e-3)
    assert torch.equal(ratio, torch.ones(3))


def test_longcat_truncates_the_diffusion_term_at_tau():
    x, v = torch.zeros(2, 4), torch.ones(2, 4)
    sigma = torch.tensor([0.95, 0.3])
    sigma_next = torch.tensor([0.7, 0.25])
    tau = 0.45
    scale = noise_scale(sigma, torch.tensor([1.0, 0.99]), "sqrt", 1.0).reshape(-1, 1)
    step = sde_step(v, x, sigma, sigma_next, noise_scale=scale, diffusion_cap=tau)
    raw = torch.sqrt(sigma / (1 - sigma)) * torch.sqrt(sigma - sigma_next)  # 1.09 (clipped), 0.15 (kept)
    assert raw[0] > tau and raw[1] < tau
    assert step.std.reshape(-1)[0].item() == pytest.approx(tau, rel=1e-6)
    assert step.std.reshape(-1)[1].item() == pytest.approx(raw[1].item(), rel=1e-6)
    # the drift uses s_t = tau / sqrt(|dt|) where clipped
    assert step.noise_scale.reshape(-1)[0].item() == pytest.approx(tau / math.sqrt(0.25), rel=1e-6)
    t, dt, s = 0.95, -0.25, tau / 0.5
    assert step.mean[0, 0].item() == pytest.approx((1 + s * s * (1 - t) / (2 * t)) * dt, rel=1e-6)


def test_flow_grpo_kl_of_the_step_means_on_numbers():
    """||mu - mu_ref||^2 / (2 std^2), averaged over the non-batch dims: (1 + 4) / 2 / (2 * 0.25) = 5; 0 at the ref."""
    mean, ref = torch.tensor([[1.0, 2.0], [0.5, 0.5]]), torch.tensor([[0.0, 0.0], [0.5, 0.5]])
    assert mean_kl(mean, ref, torch.tensor(0.5)).tolist() == pytest.approx([5.0, 0.0])


def test_longcat_velocity_kl_equals_the_kl_of_the_step_means():
    torch.manual_seed(0)
    x, v, v_ref = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8)
    sigma, sigma_next = torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.45])
    kwargs = dict(
        noise_scale=noise_scale(sigma, torch.tensor([1.0, 0.9]), "sqrt", 1.0).reshape(-1, 1), diffusion_cap=0.45
    )
    step, ref = sde_step(v, x, sigma, sigma_next, **kwargs), sde_step(v_ref, x, sigma, sigma_next, **kwargs)
    by_means = mean_kl(step.mean, ref.mean, step.std)
    by_velocity = longcat_step_kl(v, v_ref, sigma, sigma_next, step.noise_scale.reshape(-1))
    assert torch.allclose(by_means, by_velocity, rtol=1e-5)


def test_longcat_loss_weights_on_numbers_and_at_t_one():
    lp, lk = longcat_loss_weights(torch.tensor([0.5, 1.0]), torch.tensor([0.45, 0.9]), sigma_cap=0.9)
    assert lk[0].item() == pytest.approx(0.5 / (0.05 * 0.5), rel=1e-5)  # 20
    assert lk[1].item() == pytest.approx(1.0 / (0.1 * 0.1), rel=1e-5)  # 1 - t -> 1 - sigmas[1]
    assert torch.allclose(lp, lk.sqrt())


# ---------------------------------------------------------------- advantages and loss


def test_group_advantages_exact():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    std = math.sqrt(1.25)
    expected = [(r - 2.5) / (std + 1e-4) for r in (1, 2, 3, 4)] + [0.0] * 4
    assert torch.allclose(group_advantages_population(rewards, 4), torch.tensor(expected), atol=1e-6)


def test_group_advantages_clamp_at_five():
    rewards = torch.tensor([0.0] * 29 + [1.0])  # z of the outlier = sqrt(29) = 5.39
    advantages = group_advantages_population(rewards, 30)
    assert advantages[-1].item() == 5.0
    assert advantages[0].item() == pytest.approx(-(1 / 30) / (math.sqrt(29) / 30 + 1e-4), rel=1e-5)


def test_max_group_std_normalisation_exact_and_across_ranks():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 2.0, 2.0])
    advantages, sigma_max = max_group_std_advantages(rewards, 4)
    assert sigma_max.item() == pytest.approx(math.sqrt(1.25))
    denominator = math.sqrt(1.25) + 1e-4
    expected = [(r - 2.5) / denominator for r in (1, 2, 3, 4)] + [(r - 1.0) / denominator for r in (0, 0, 2, 2)]
    assert torch.allclose(advantages, torch.tensor(expected), atol=1e-6)
    # another rank holds a group with std 3: it sets sigma_max for this rank too
    advantages, sigma_max = max_group_std_advantages(rewards, 4, gather=lambda t: torch.cat([t, torch.tensor([3.0])]))
    assert sigma_max.item() == 3.0
    assert advantages[0].item() == pytest.approx(-1.5 / 3.0001, rel=1e-6)


def test_missing_rewards_carry_no_signal():
    rewards = torch.tensor([1.0, float("nan"), 3.0, 2.0])
    assert torch.allclose(fill_missing_rewards(rewards, 4), torch.tensor([1.0, 2.0, 3.0, 2.0]))
    advantages = group_advantages_population(rewards, 4)
    assert advantages[1].item() == 0.0
    assert advantages[0].item() == pytest.approx(-1 / (math.sqrt(2 / 3) + 1e-4), rel=1e-5)
    advantages, _ = max_group_std_advantages(torch.full((4,), float("nan")), 4)
    assert torch.equal(advantages, torch.zeros(4))


def test_rewards_not_in_whole_groups_are_refused():
    with pytest.raises(AdvantageError, match="multiple of the group size 4"):
        group_advantages_population(torch.zeros(6), 4)


def test_clipped_policy_loss_on_numbers():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, ratio = clipped_policy_loss(new, old, advantages, clip_range=0.2)
    # A > 0: min(r, clip(r)) is kept; A < 0: max(r, clip(r)) is kept (pessimistic bound)
    assert torch.allclose(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8]), atol=1e-6)
    assert torch.allclose(ratio, torch.tensor([1.5, 1.5, 0.5, 0.5]))


def test_flow_grpo_sums_rewards_longcat_sums_advantages():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([0.0, 0.0, 10.0, float("nan")])  # the NaN carries no signal in either
    weights = {"a": 1.0, "b": 0.5}
    flow, _ = grpo.advantages(WanGRPOConfig("flow_grpo"), {"a": a, "b": b}, weights)
    assert torch.allclose(flow, group_advantages_population(a + 0.5 * torch.tensor([0.0, 0.0, 10.0, 10 / 3]), 4))
    longcat, stats = grpo.advantages(WanGRPOConfig("longcat"), {"a": a, "b": b}, weights)
    expected = max_group_std_advantages(a, 4)[0] + 0.5 * max_group_std_advantages(b, 4)[0]
    assert torch.allclose(longcat, expected) and expected[3] == max_group_std_advantages(a, 4)[0][3]
    assert stats["sigma_max/b"] == pytest.approx(math.sqrt(200 / 9), rel=1e-6)


def test_one_config_presets_and_one_place_per_difference():
    flow, longcat = WanGRPOConfig("flow_grpo"), WanGRPOConfig("longcat")
    assert (flow.shared_noise, flow.noise_schedule, flow.critical_steps, flow.advantage, flow.kl_beta) == (
        False,
        "linear",
        None,
        "group",
        0.004,
    )
    assert (
        longcat.shared_noise,
        longcat.noise_schedule,
        longcat.critical_steps,
        longcat.diffusion_cap,
        longcat.advantage,
        longcat.loss_weighting,
    ) == (True, "sqrt", 6, 0.45, "max_group_std", "lambda")
    mixed = WanGRPOConfig("longcat", noise_schedule="linear", diffusion_cap=0)  # a field means the same for both
    assert mixed.noise_schedule == "linear" and mixed.diffusion_cap is None
    with pytest.raises(ValueError, match="--sde-window and --critical-steps"):
        WanGRPOConfig("longcat", sde_window=[0, 3])
    for module in Path(grpo.__file__).parent.glob("grpo*.py"):  # grpo.py, grpo_config.py, grpo_sampling.py, ...
        assert "algorithm ==" not in module.read_text(), module  # no string tests of the algorithm


def test_loss_weights_uniform_lambda_and_flow_grpo_wan():
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    sigma, sigma_next = torch.tensor([0.8, 0.5]), torch.tensor([0.5, 0.2])
    scale = noise_scale(sigma, sigmas, "linear", 1.0)  # 0.64, 0.4
    w_policy, w_kl = grpo.loss_weights(WanGRPOConfig("flow_grpo"), sigma, sigma_next, scale, sigmas)
    assert w_policy.item() == 1.0 and w_kl.item() == 1.0
    wan_config = WanGRPOConfig("flow_grpo", loss_weighting="noise_over_sqrt_dt")
    w_policy, w_kl = grpo.loss_weights(wan_config, sigma, sigma_next, scale, sigmas)
    assert w_policy.tolist() == pytest.approx([0.64 / math.sqrt(0.3), 0.4 / math.sqrt(0.3)]) and w_kl.item() == 1.0
    w_policy, w_kl = grpo.loss_weights(WanGRPOConfig("longcat"), sigma, sigma_next, scale, sigmas)
    assert w_kl.tolist() == pytest.approx([0.8 / (0.3 * 0.2), 0.5 / (0.3 * 0.5)])


def test_which_steps_are_sde_steps():
    sde, trained = sde_masks(WanGRPOConfig("flow_grpo"), 20, 2)  # flow_grpo's Wan trainer: SDE everywhere, T-1 trained
    assert sde.all() and trained[:, :19].all() and not trained[:, 19].any()
    sde, trained = sde_masks(WanGRPOConfig("flow_grpo", sde_window=[2, 5]), 8, 1)
    assert sde.tolist() == trained.tolist() == [[False, False, True, True, True, False, False, False]]
    with pytest.warns(UserWarning, match="--critical-steps 6 > --num-inference-steps 4: using 4"):
        sde, trained = sde_masks(WanGRPOConfig("longcat"), 4, 50, torch.Generator().manual_seed(0))
    assert sde.sum(dim=1).eq(1).all() and torch.equal(sde, trained) and sde[:, 3].any()


# ---------------------------------------------------------------- tiny Wan

PROMPTS = tiny_wan.TINY_CORPUS[:4]


@pytest.fixture(scope="module")
def tiny_dir(tiny_wan_dir):
    torch.set_num_threads(1)
    return tiny_wan_dir  # conftest's, shared by the post-training tests


def small(tiny_dir, **changes):
    """5 frames of 16x16 (latents 16 x 2 x 2 x 2): the tiny VAE's pixels respond to so few latents that a few dozen
    GRPO steps move an analytic reward well outside the sample spread (at 64x64 the same needs hundreds)."""
    return dataclasses.replace(tiny_wan.generation_defaults(tiny_dir), num_frames=5, height=16, width=16, **changes)


def trainer_for(pipe, generation, config, transformer=None, optimizer=None, rewards=None):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    transformer = transformer if transformer is not None else pipe.transformer
    model = transformer
    if optimizer is not None:
        model, optimizer = accelerator.prepare(transformer, optimizer)
    cache = wan.PromptCache(pipe, generation.max_sequence_length)
    return grpo.WanGRPOTrainer(config, accelerator, pipe, model, transformer, optimizer, cache, generation, rewards)


def test_noise_level_zero_rollout_is_the_euler_ode_sampler(tiny_dir):
    pipe = wan.load_wan_pipeline(tiny_dir)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # first sigma exactly 1: the t = 1 case too
    generation = small(tiny_dir)
    trainer = trainer_for(pipe, generation, WanGRPOConfig("flow_grpo", group_size=2, noise_level=0.0))
    batch = trainer.sample(PROMPTS[:2], torch.Generator().manual_seed(0), micro_batch_size=4)
    noise = wan.initial_noise(pipe, 4, generation, generator=torch.Generator().manual_seed(0))
    prompts = [p for p in PROMPTS[:2] for _ in range(2)]
    cache = trainer.prompt_cache
    ode = wan.sample(
        pipe.transformer,
        pipe.scheduler,
        noise,
        cache.embed(prompts),
        cache.negative(4),
        generation.num_inference_steps,
        generation.guidance_scale,
        return_trajectory=True,
    )
    assert batch.sde_mask.all()  # every step went through sde_step (with a = 0)
    assert torch.equal(batch.trajectory, torch.stack(ode.trajectory, dim=1))
    expected = pipe(
        prompts,
        num_frames=5,
        height=16,
        width=16,
        num_inference_steps=generation.num_inference_steps,
        guidance_scale=generation.guidance_scale,
        latents=noise.clone(),
        output_type="latent",
        max_sequence_length=generation.max_sequence_length,
    ).frames
    torch.testing.assert_close(batch.trajectory[:, -1], expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="noise_level=0.0: training needs SDE steps"):
        trainer.check_batching(4)


@pytest.mark.parametrize("algorithm", ["flow_grpo", "longcat", "flow_grpo_wan_weights"])
def test_on_policy_ratio_is_exactly_one_before_the_first_update(tiny_dir, algorithm):
    pipe = wan.load_wan_pipeline(tiny_dir)
    generation = small(tiny_dir)
    transformer = pipe.transformer
    parameters = wan.add_lora(transformer, rank=4, alpha=4.0)
    with torch.no_grad():  # a LoRA that already changes the model, so that policy != reference
        for parameter in parameters:
            parameter.add_(0.05 * torch.randn_like(parameter))
    config = {
        "flow_grpo": WanGRPOConfig("flow_grpo", group_size=4, noise_schedule="sqrt", noise_level=0.7),
        "longcat": WanGRPOConfig("longcat", group_size=4, critical_steps=4),
        "flow_grpo_wan_weights": WanGRPOConfig("flow_grpo", group_size=4, loss_weighting="noise_over_sqrt_dt"),
    }[algorithm]
    trainer = trainer_for(pipe, generation, config, transformer, torch.optim.AdamW(parameters, lr=1e-2))
    batch = trainer.sample(PROMPTS[:2], torch.Generator().manual_seed(0), micro_batch_size=4)
    if algorithm == "longcat":  # one critical step per prompt, shared initial noise per group
        assert batch.sde_mask.sum(dim=1).eq(1).all() and batch.sde_mask.float().argmax(1).lt(4).all()
        assert torch.equal(batch.trajectory[0, 0], batch.trajectory[3, 0])
        assert not torch.equal(batch.trajectory[0, 0], batch.trajectory[4, 0])
    else:  # flow_grpo: SDE on every step, the last one not trained
        assert batch.sde_mask.all() and batch.train_mask[:, :-1].all() and not batch.train_mask[:, -1].any()
    advantages = torch.randn(8)
    summary = trainer.update(batch, advantages, micro_batch_size=4)
    assert summary["first_update_ratio_max_error"] == 0.0  # exp(logp_new - logp_old) == 1 bit for bit
    assert summary["kl"] > 0
    for rows, steps in trainer.micro_batches(batch, 4):  # after the update the policy has moved
        _, stats = trainer.loss(batch, rows, steps, advantages)
        assert not torch.equal(stats["ratio"], torch.ones_like(stats["ratio"]))


def test_zero_advantage_videos_leave_the_loss_kl_included(tiny_dir):
    """flow_grpo's Wan trainer drops videos whose advantage is 0: with every advantage 0, --mask-zero-advantages
    leaves the LoRA exactly as it was (no KL pull either); without it the KL to the reference moves it."""

    def lora_after_update(mask: bool) -> list[torch.Tensor]:
        pipe = wan.load_wan_pipeline(tiny_dir)
        torch.manual_seed(0)
        parameters = wan.add_lora(pipe.transformer, rank=4, alpha=4.0)
        with torch.no_grad():  # policy != reference, so that the KL term has a gradient
            for parameter in parameters:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
        config = WanGRPOConfig("flow_grpo", group_size=2, mask_zero_advantages=mask, kl_beta=0.5)
        trainer = trainer_for(
            pipe, small(tiny_dir), config, pipe.transformer, torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.0)
        )
        batch = trainer.sample(PROMPTS[:2], torch.Generator().manual_seed(0), micro_batch_size=4)
        before = [p.detach().clone() for p in parameters]
        summary = trainer.update(batch, torch.zeros(4), micro_batch_size=2)
        assert summary["kl"] > 0 and trainer.optimizer_steps == 2
        return [torch.equal(a, b) for a, b in zip(before, parameters)]

    assert all(lora_after_update(mask=True))
    assert not all(lora_after_update(mask=False))


def test_lora_ema_follows_flow_grpos_rule():
    """flow_grpo's EMAModuleWrapper(decay 0.9, update_step_interval 8): after optimiser step n, when (n + 1) % 8 == 0,
    ema += (1 - min((1 + n) / (10 + n), 0.9)) (w - ema). With w = n after step n: updates at n = 7 and 15 only."""
    from descore_plugin.integrations.post_training import LoraEMA

    weight = torch.nn.Parameter(torch.zeros(2))
    ema = LoraEMA([weight], decay=0.9, interval=8, names=["w"])
    for n in range(1, 17):
        with torch.no_grad():
            weight.fill_(float(n))
        ema.update(n)
        if n == 7:  # d = 8 / 17: ema = (9 / 17) 7
            assert ema.shadow[0].tolist() == pytest.approx([63 / 17] * 2)
    # n = 15: d = min(16 / 25, 0.9) = 0.64: ema = 63/17 + 0.36 (15 - 63/17)
    assert ema.shadow[0].tolist() == pytest.approx([63 / 17 + 0.36 * (15 - 63 / 17)] * 2)
    assert ema.current_decay(1000) == 0.9
    with ema.applied():  # evaluation and publishing see the EMA, training its own weights again after
        assert weight.tolist() == pytest.approx([63 / 17 + 0.36 * (15 - 63 / 17)] * 2)
    assert weight.tolist() == [16.0, 16.0]
    state = ema.state_dict()
    assert list(state) == ["w"]
    fresh = LoraEMA([weight], names=["w"])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.shadow[0], ema.shadow[0])


def test_flow_grpo_preset_has_its_wan_trainers_habits_and_longcat_not():
    flow, longcat = WanGRPOConfig("flow_grpo"), WanGRPOConfig("longcat")
    assert (flow.ema, flow.untrained_steps, flow.mask_zero_advantages) == (True, 2, True)
    assert (longcat.ema, longcat.untrained_steps, longcat.mask_zero_advantages) == (False, 0, False)
    assert WanGRPOConfig("flow_grpo", ema=False, untrained_steps=0).ema is False  # options


def train_tiny(tiny_dir, config, learning_rate, iterations, seed=0):
    """GRPO on the tiny Wan against analytic:redness; returns the rewards of 32 fresh ODE samples on fixed noise
    from the base model (adapter disabled) and from the trained model: paired videos."""
    pipe = wan.load_wan_pipeline(tiny_dir)
    generation = small(tiny_dir)
    transformer = pipe.transformer
    torch.manual_seed(seed)
    parameters = wan.add_lora(transformer, rank=4, alpha=4.0)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    rewards = reward_set(["analytic:redness"])
    trainer = trainer_for(pipe, generation, config, transformer, optimizer, rewards)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        metrics = trainer.step(list(PROMPTS), generator)
        assert metrics["train/first_update_ratio_max_error"] == 0.0
    eval_prompts = list(PROMPTS) * 8

    def fresh():
        videos, _ = wan.generate(
            pipe,
            trainer.prompt_cache,
            eval_prompts,
            generation,
            transformer=transformer,
            generator=torch.Generator().manual_seed(1000 + seed),
        )
        return rewards(videos, eval_prompts)["analytic:redness"]

    trained = fresh()
    with wan.disable_adapter(transformer):
        base = fresh()
    return base, trained


@pytest.mark.slow
def test_flow_grpo_raises_the_reward_of_fresh_samples(tiny_dir):
    # flow_grpo's defaults (the Wan trainer's linear noise schedule, the first T-1 steps trained). Measured (seeds 0,
    # 1): gain = 0.74, 0.31 base stds; 91 %, 81 % of the paired videos improve (the test runs seed 0).
    base, trained = train_tiny(tiny_dir, WanGRPOConfig("flow_grpo", group_size=8), learning_rate=1e-2, iterations=60)
    gain = trained - base
    assert gain.mean() > 0.5 * base.std(), (base.mean(), trained.mean(), base.std())
    assert (gain > 0).float().mean() >= 0.75


@pytest.mark.slow
def test_longcat_raises_the_reward_of_fresh_samples(tiny_dir):
    # Measured (seeds 0, 1, 2): gain = 1.95, 2.32, 2.07 base stds; 94 %, 100 %, 97 % of the paired videos improve.
    config = WanGRPOConfig("longcat", group_size=8, critical_steps=3)
    base, trained = train_tiny(tiny_dir, config, learning_rate=1e-2, iterations=60)
    gain = trained - base
    assert gain.mean() > 1.5 * base.std(), (base.mean(), trained.mean(), base.std())
    assert (gain > 0).float().mean() >= 0.85


# ---------------------------------------------------------------- the recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "wan_flow_grpo.py"


def run_recipe(tiny_dir, tmp_path, algorithm, *extra, processes=1, output="out", checksums=None):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = [
        str(RECIPE),
        "--algorithm",
        algorithm,
        "--pipeline",
        str(tiny_dir),
        "--reward",
        "analytic:redness",
        "--prompts",
        str(prompts),
        "--output-dir",
        str(tmp_path / output),
        "--num-frames",
        "5",
        "--height",
        "16",
        "--width",
        "16",
        "--learning-rate",
        "1e-2",
        "--lora-rank",
        "4",
        "--lora-alpha",
        "4",
        "--eval-prompts",
        "2",
        "--eval-videos-per-prompt",
        "1",
        "--seed",
        "0",
        *extra,
    ]
    if checksums is not None:  # the test helper records each process's weights after every optimiser step
        args = [str(ROOT / "tests" / "ddp_checksums.py"), str(checksums), *args]
    if processes == 1:
        result = run_python(args, timeout=300)
    else:  # torchrun launcher on the CPU: ACCELERATE_USE_CPU selects gloo DDP (accelerate's MULTI_CPU)
        result = run_python(accelerate_cpu(processes, *args), env=offline_env(ACCELERATE_USE_CPU="1"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / output


@pytest.mark.parametrize("algorithm", ["flow_grpo", "longcat"])
def test_two_processes_keep_identical_lora_weights(tiny_dir, tmp_path, algorithm):
    out = run_recipe(
        tiny_dir,
        tmp_path,
        algorithm,
        "--max-steps",
        "3",
        "--group-size",
        "4",
        "--micro-batch-size",
        "2",
        "--num-inference-steps",
        "4",
        "--untrained-steps",
        "0",
        processes=2,
        checksums=tmp_path / "checksums",
    )
    ranks = [
        [json.loads(line)["sha256"] for line in (tmp_path / "checksums" / f"rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    ]
    updates = 3 * WanGRPOConfig(algorithm).updates_per_rollout
    assert len(ranks[0]) == updates and ranks[0] == ranks[1]  # identical on both processes after every update
    assert len(set(ranks[0])) == updates  # the weights do change at every update
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(row["train/first_update_ratio_max_error"] == 0.0 for row in rows if row["kind"] == "train")


def test_recipe_resumes_exactly_and_writes_a_diffusers_lora(tiny_dir, tmp_path):
    """flow_grpo's preset: the EMA of the LoRA is what is evaluated and published, the first --untrained-steps steps
    only sample; resume (optimizer, EMA, optimiser-step clock) equals the uninterrupted run."""
    from safetensors.torch import load_file

    flags = ("--checkpoint-every", "2", "--group-size", "2", "--untrained-steps", "1", "--ema-interval", "1")
    full = run_recipe(tiny_dir, tmp_path, "flow_grpo", "--max-steps", "3", *flags, output="full")
    run_recipe(tiny_dir, tmp_path, "flow_grpo", "--max-steps", "2", *flags, output="resumed")
    resumed = run_recipe(tiny_dir, tmp_path, "flow_grpo", "--max-steps", "3", *flags, "--resume", output="resumed")
    a = load_file(str(full / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("lora", "lora_ema"):
        x, y = (load_file(str(run / "checkpoint-3" / f"{name}.safetensors")) for run in (full, resumed))
        assert all(torch.equal(x[k], y[k]) for k in x)
    # the published LoRA is the EMA, not the trained weights
    raw = load_file(str(full / "checkpoint-3" / "lora.safetensors"))
    ema = load_file(str(full / "checkpoint-3" / "lora_ema.safetensors"))
    assert sorted(a) == sorted(f"transformer.{k}" for k in raw) and len(ema) == len(raw)
    for key in raw:  # peft names the parameter blocks.0.attn1.to_q.lora_A.default.weight
        assert torch.equal(a[f"transformer.{key}"], ema[key.replace(".weight", ".default.weight")])
    assert not all(torch.equal(a[f"transformer.{k}"], raw[k]) for k in raw)
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    # eval 0, train 1-2, eval 2 (the end of the first run), then the resumed run appended train 3 and eval 3
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("eval", 0),
        ("train", 1),
        ("train", 2),
        ("eval", 2),
        ("train", 3),
        ("eval", 3),
    ]
    assert [r["train/trained"] for r in rows if r["kind"] == "train"] == [0.0, 1.0, 1.0]
    assert (resumed / "curves.png").stat().st_size > 0 and (resumed / "checkpoint-3").is_dir()
    # what the report reads: fixed-prompt samples per evaluation, mp4 + per-video named scores
    samples = resumed / "samples" / "step-000003"
    lines = [json.loads(line) for line in (samples / "scores.jsonl").read_text().splitlines()]
    assert [(line["index"], line["video"]) for line in lines] == [(0, "000.mp4"), (1, "001.mp4")]
    assert (samples / "001.mp4").stat().st_size > 0 and set(lines[0]["scores"]) == {"analytic:redness"}
    assert lines[0]["scores"]["analytic:redness"] == pytest.approx(
        rows[-1]["eval/analytic:redness"] * 2 - lines[1]["scores"]["analytic:redness"]
    )

    pipe = wan.load_wan_pipeline(tiny_dir)
    pipe.load_lora_weights(str(full))
    generation = small(tiny_dir)
    cache = wan.PromptCache(pipe, generation.max_sequence_length)
    noise = wan.initial_noise(pipe, 1, generation, generator=torch.Generator().manual_seed(0))
    loaded, _ = wan.generate(pipe, cache, PROMPTS[:1], generation, latents=noise.clone())
    with wan.disable_adapter(pipe.transformer):
        base, _ = wan.generate(pipe, cache, PROMPTS[:1], generation, latents=noise.clone())
    assert not torch.equal(loaded, base)  # the adapter was loaded and acts


def test_recipe_flags_errors_and_help(tiny_dir, tmp_path):
    spec = __import__("importlib.util").util.spec_from_file_location("wan_flow_grpo", RECIPE)
    recipe = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    base = [
        "--pipeline",
        str(tiny_dir),
        "--prompts",
        str(tmp_path / "p.txt"),
        "--output-dir",
        str(tmp_path / "o"),
        "--max-steps",
        "1",
    ]
    (tmp_path / "p.txt").write_text("a red ball\n")
    assert recipe.main([*base, "--algorithm", "longcat", "--sde-window", "0", "2"]) == 2  # one line, no traceback
    assert recipe.main([*base, "--reward", "descore:subject=2", "analytic:redness"]) == 2  # needs --reward-model
    assert not (tmp_path / "o").exists()  # refused before the run directory exists
    result = run_python([RECIPE, "--help"], timeout=120)
    flags = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  --")]
    assert len(flags) > 40 and "--critical_steps" in flags and "--tau" not in result.stdout
    blocks = result.stdout.split("\n  --")[1:]
    assert all("(default:" in block or "(required)" in block for block in blocks)  # its default, or that it has none
