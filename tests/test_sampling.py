"""Samplers (DDPM, DDIM, DPM-Solver++) against diffusers' own loops, guidance, ControlNet, seeds, analytic accuracy."""

import pytest
import torch
from diffusers import DDIMScheduler as DiffusersDDIM
from diffusers import DDPMScheduler as DiffusersDDPM
from diffusers import DPMSolverMultistepScheduler
from monai.inferers import ControlNetDiffusionInferer, DiffusionInferer
from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from fairmonai.generators.sampling import (
    DPMSolverPlusPlusScheduler,
    GaussianDataDenoiser,
    SpacedDDIMScheduler,
    SpacedDDPMScheduler,
    controlnet_control,
    make_scheduler,
    sample,
)

# a latent-diffusion-style schedule (not MONAI's default) so that "same betas" is really tested
BETAS = dict(schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
DIFFUSERS_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions: threads only add overhead, and on a shared machine oversubscribed threads are slower 10-100x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_match(got, expected, rtol=1e-5):
    """Equal up to float32 round-off relative to the samples' scale (the untrained toy UNet's samples reach ~1e2)."""
    scale = expected.abs().max().item()
    assert scale > 0
    err = (got - expected).abs().max().item()
    assert err <= rtol * scale, f"max |difference| {err:.3g} exceeds {rtol:g} x max |value| {scale:.3g}"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def train_scheduler(prediction_type="epsilon", **kw):
    return DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=prediction_type, **BETAS, **kw)


def unet(conditional=False, seed=0):
    torch.manual_seed(seed)
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 16),
        attention_levels=(False, conditional),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        with_conditioning=conditional,
        cross_attention_dim=8 if conditional else None,
    )
    return unzero(net).eval()


def unzero(net, seed=0):
    """Give random values to the parameters MONAI initialises to zero (the UNet's output convolution, attention
    output projections, ControlNet's zero convolutions): untouched, the network's output would not depend on its
    input, its context or its control, and sampler comparisons would be vacuous."""
    g = gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net


def test_toy_unet_output_depends_on_input_time_and_context():
    net, x, t = unet(conditional=True), noise(), torch.full((2,), 500)
    ctx, null = contexts()
    out = net(x, t, context=ctx)
    assert out.abs().mean() > 1e-2
    for other in (net(2 * x, t, context=ctx), net(x, t // 2, context=ctx), net(x, t, context=null.expand(2, -1, -1))):
        assert (other - out).abs().max() > 1e-4


def noise(batch=2, seed=0):
    return torch.randn(batch, 1, 16, 16, generator=gen(seed))


def diffusers_loop(model, scheduler, x, generator=None, **step_kw):
    """diffusers' own sampling loop, calling the model the way MONAI's DiffusionInferer.sample does."""
    for t in scheduler.timesteps:
        out = model(x, timesteps=torch.Tensor((t,)), context=None)
        x = scheduler.step(out, t, x, generator=generator, **step_kw).prev_sample
    return x


# ------------------------------------------------------------------------------------------- DPM-Solver++


@pytest.mark.parametrize("order,prediction_type", [(2, "epsilon"), (3, "epsilon"), (2, "v_prediction")])
def test_dpm_adapter_in_monai_inferer_matches_diffusers_loop(order, prediction_type):
    model, x_T = unet(), noise()
    adapter = make_scheduler("dpmsolver++", train_scheduler(prediction_type), 12, solver_order=order)
    assert isinstance(adapter, DPMSolverPlusPlusScheduler)
    # built independently from diffusers' own schedule names: equal results also prove the betas agree
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=order, prediction_type=prediction_type, **DIFFUSERS_BETAS
    )
    ref.set_timesteps(12)
    assert torch.equal(adapter.timesteps, ref.timesteps)
    with torch.no_grad():
        expected = diffusers_loop(model, ref, x_T.clone())
    inferer = DiffusionInferer(adapter)
    got = inferer.sample(x_T.clone(), model, scheduler=adapter, verbose=False)
    assert_match(got, expected)
    # a second pass with the same scheduler object starts afresh (multistep history reset) ...
    torch.testing.assert_close(inferer.sample(x_T.clone(), model, scheduler=adapter, verbose=False), got)
    # ... and fairmonai's own loop computes the same
    assert_match(sample(model, adapter, x_T.clone()), expected)


def test_dpm_adapter_refuses_steps_out_of_order_and_inconsistent_settings():
    adapter = make_scheduler("dpmsolver++", train_scheduler(), 10)
    x = noise()
    adapter.step(torch.zeros_like(x), adapter.timesteps[0], x)
    with pytest.raises(ValueError, match=f"expected timestep {int(adapter.timesteps[1])} next"):
        adapter.step(torch.zeros_like(x), adapter.timesteps[3], x)
    with pytest.raises(ValueError, match="solver_order must be 1, 2 or 3"):
        make_scheduler("dpmsolver++", train_scheduler(), 10, solver_order=4)
    with pytest.raises(ValueError, match="clip symmetrically"):
        DPMSolverPlusPlusScheduler(DDPMScheduler(1000, clip_sample=True, clip_sample_min=0.0, clip_sample_max=1.0))


def test_dpm_adapter_clip_sample_clips_the_data_prediction():
    adapter = make_scheduler("dpmsolver++", train_scheduler(prediction_type="sample"), 10, clip_sample=True)
    x = noise()
    _, x0 = adapter.step(torch.full_like(x, 3.0), adapter.timesteps[0], x)
    assert torch.allclose(x0, torch.ones_like(x0))


# ------------------------------------------------------------------------------------------- DDIM


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_through_sample_matches_diffusers_ddim(eta):
    model, x_T = unet(), noise()
    ddim = make_scheduler("ddim", train_scheduler(), 50, eta=eta)
    assert isinstance(ddim, SpacedDDIMScheduler)
    ref = DiffusersDDIM(
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="trailing",
        **DIFFUSERS_BETAS,
    )
    ref.set_timesteps(50)
    assert torch.equal(ddim.timesteps, ref.timesteps)
    with torch.no_grad():
        expected = diffusers_loop(model, ref, x_T.clone(), generator=gen(5), eta=eta)
    got = sample(model, ddim, x_T.clone(), generator=gen(5))
    assert_match(got, expected)


def test_stock_monai_ddim_through_sample_matches_diffusers_linspace_ddim():
    model, x_T = unet(), noise()
    monai_ddim = DDIMScheduler(1000, clip_sample=False, set_alpha_to_one=True, steps_offset=0, **BETAS)
    monai_ddim.set_timesteps(20)
    ref = DiffusersDDIM(1000, clip_sample=False, set_alpha_to_one=True, timestep_spacing="linspace", **DIFFUSERS_BETAS)
    ref.set_timesteps(20)
    with torch.no_grad():
        expected = diffusers_loop(model, ref, x_T.clone())
    assert_match(sample(model, monai_ddim, x_T.clone()), expected)


# ------------------------------------------------------------------------------------------- DDPM


def test_ddpm_on_all_steps_is_monai_ddpm_bit_for_bit():
    tr = train_scheduler()
    model = GaussianDataDenoiser(tr, 0.3, 0.7)
    x_T = noise(8)
    monai_ddpm = DDPMScheduler(1000, clip_sample=False, **BETAS)
    monai_ddpm.set_timesteps(1000)
    ours = make_scheduler("ddpm", tr, 1000)
    assert torch.equal(sample(model, ours, x_T, generator=gen(3)), sample(model, monai_ddpm, x_T, generator=gen(3)))


def test_ddpm_on_a_subset_matches_diffusers_respaced_ddpm():
    model, x_T = unet(), noise()
    ddpm = make_scheduler("ddpm", train_scheduler(), 25)
    assert isinstance(ddpm, SpacedDDPMScheduler)
    ref = DiffusersDDPM(1000, clip_sample=False, variance_type="fixed_small", **DIFFUSERS_BETAS)
    ref.set_timesteps(timesteps=ddpm.timesteps.tolist())
    with torch.no_grad():
        expected = diffusers_loop(model, ref, x_T.clone(), generator=gen(4))
    assert_match(sample(model, ddpm, x_T.clone(), generator=gen(4)), expected)


def test_stock_monai_ddpm_on_a_subset_of_steps_is_refused():
    stock = DDPMScheduler(1000, clip_sample=False)
    stock.set_timesteps(100)
    with pytest.raises(ValueError, match="cannot sample on 100 of its 1000 timesteps.*make_scheduler\\('ddpm'"):
        sample(GaussianDataDenoiser(stock, 1.0, 0.5), stock, noise())


def test_sampling_is_deterministic_for_a_seed_and_differs_across_seeds():
    model = unet()
    ddpm = make_scheduler("ddpm", train_scheduler(), 10)
    a = sample(model, ddpm, noise(seed=1), generator=gen(7))
    assert torch.equal(a, sample(model, ddpm, noise(seed=1), generator=gen(7)))
    assert (a - sample(model, ddpm, noise(seed=1), generator=gen(8))).abs().max() > 1e-2  # step noise is seeded
    assert (a - sample(model, ddpm, noise(seed=2), generator=gen(7))).abs().max() > 1e-2  # starting noise matters
    dpm = make_scheduler("dpmsolver++", train_scheduler(), 10)
    assert torch.equal(sample(model, dpm, noise(seed=1)), sample(model, dpm, noise(seed=1)))


# ------------------------------------------------------------------------------------------- guidance and control


def contexts(batch=2):
    return torch.randn(batch, 2, 8, generator=gen(11)), torch.zeros(1, 2, 8)


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional_sampling():
    model, x_T = unet(conditional=True), noise()
    ctx, null = contexts()
    ddim = make_scheduler("ddim", train_scheduler(), 8)
    cond = sample(model, ddim, x_T, context=ctx)
    uncond = sample(model, ddim, x_T, context=null.expand(2, -1, -1))
    assert (cond - uncond).abs().max() > 1e-3  # the condition changes the samples
    torch.testing.assert_close(sample(model, ddim, x_T, context=ctx, null_context=null, guidance_scale=1.0), cond)
    assert_match(sample(model, ddim, x_T, context=ctx, null_context=null, guidance_scale=0.0), uncond)


def test_guided_sampling_combines_conditional_and_unconditional_predictions():
    model, x_T = unet(conditional=True), noise()
    ctx, null = contexts()
    s = 3.0

    def guided_by_hand(x, timesteps, context=None):  # two separate forwards, the guidance formula written out
        eps_u = model(x, timesteps, context=null.expand(x.shape[0], -1, -1))
        eps_c = model(x, timesteps, context=ctx)
        return eps_u + s * (eps_c - eps_u)

    dpm = make_scheduler("dpmsolver++", train_scheduler(), 8)
    expected = sample(guided_by_hand, dpm, x_T, context=ctx)
    got = sample(model, dpm, x_T, context=ctx, null_context=null, guidance_scale=s)
    assert_match(got, expected)
    with pytest.raises(ValueError, match="needs both context and null_context"):
        sample(model, dpm, x_T, context=ctx, guidance_scale=s)


def test_controlnet_control_matches_monai_controlnet_inferer_with_guidance():
    model, x_T = unet(conditional=True), noise()
    torch.manual_seed(1)
    controlnet = ControlNet(
        spatial_dims=2,
        in_channels=1,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        with_conditioning=True,
        cross_attention_dim=8,
        conditioning_embedding_num_channels=(8,),
    )
    controlnet = unzero(controlnet, seed=2).eval()
    cn_cond = torch.rand(2, 1, 16, 16, generator=gen(3))
    ctx = torch.randn(2, 2, 8, generator=gen(11))
    null = torch.full_like(ctx, -1.0)  # MONAI's inferer builds the unconditional input with cfg_fill_value=-1
    ddim = make_scheduler("ddim", train_scheduler(), 6)
    expected = ControlNetDiffusionInferer(ddim).sample(
        x_T, model, controlnet, cn_cond, scheduler=ddim, conditioning=ctx, cfg=2.5, verbose=False
    )
    control = controlnet_control(controlnet, cn_cond)
    got = sample(model, ddim, x_T, context=ctx, null_context=null, guidance_scale=2.5, control=control)
    assert_match(got, expected)
    without = sample(model, ddim, x_T, context=ctx, null_context=null, guidance_scale=2.5)
    assert (got - without).abs().max() > 1e-3


def test_progress_bar_is_shown_on_request(capsys):
    model = GaussianDataDenoiser(train_scheduler(), 0.0, 1.0)
    sample(model, make_scheduler("ddim", train_scheduler(), 5), noise(), progress=True)
    assert "sampling" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- analytic accuracy

MU, SIGMA = 1.0, 0.5


@pytest.mark.parametrize(
    "name,steps,kw,prediction_type,std_tol",
    [
        ("dpmsolver++", 20, {}, "epsilon", 0.08),
        ("dpmsolver++", 20, {}, "v_prediction", 0.08),
        ("dpmsolver++", 20, {"use_karras_sigmas": True}, "epsilon", 0.08),
        ("dpmsolver++", 20, {"solver_order": 3}, "sample", 0.08),
        ("ddim", 50, {}, "epsilon", 0.08),
        ("ddim", 50, {}, "v_prediction", 0.08),
        ("ddpm", 1000, {}, "epsilon", 0.02),
        ("ddpm", 100, {}, "epsilon", 0.08),
    ],
)
def test_solvers_sample_a_known_gaussian_with_the_exact_denoiser(name, steps, kw, prediction_type, std_tol):
    tr = DDPMScheduler(1000, clip_sample=False, prediction_type=prediction_type)
    model = GaussianDataDenoiser(tr, MU, SIGMA, prediction_type=prediction_type)
    x = sample(
        model, make_scheduler(name, tr, steps, **kw), torch.randn(4096, 1, 4, 4, generator=gen(0)), generator=gen(1)
    )
    assert abs(x.mean().item() - MU) < 0.01
    assert abs(x.std().item() - SIGMA) / SIGMA < std_tol


def test_second_order_dpm_solver_is_more_accurate_than_first_order():
    tr = DDPMScheduler(1000, clip_sample=False)
    model, x_T = GaussianDataDenoiser(tr, MU, SIGMA), torch.randn(4096, 1, 4, 4, generator=gen(0))
    err = {
        o: abs(sample(model, make_scheduler("dpmsolver++", tr, 20, solver_order=o), x_T).std().item() - SIGMA)
        for o in (1, 2)
    }
    assert err[2] < 0.5 * err[1]


def test_gaussian_denoiser_predicts_the_noise_of_its_own_data():
    tr = DDPMScheduler(1000, clip_sample=False)
    model = GaussianDataDenoiser(tr, MU, SIGMA)
    x0 = MU + SIGMA * torch.randn(20000, generator=gen(0)).double()
    eps = torch.randn(20000, generator=gen(1)).double()
    t = torch.full((20000,), 300)
    a = tr.alphas_cumprod[300].double()
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = model(x_t, t)
    # the Bayes-optimal predictor: residual uncorrelated with the input, smaller error than any rescaling of it
    assert abs(torch.corrcoef(torch.stack([eps - pred, x_t]))[0, 1]) < 0.03
    mse = ((eps - pred) ** 2).mean()
    assert mse < ((eps - 0.9 * pred) ** 2).mean() and mse < ((eps - 1.1 * pred) ** 2).mean()


# ------------------------------------------------------------------------------------------- bad input


def test_make_scheduler_rejects_bad_input_by_name():
    tr = train_scheduler()
    with pytest.raises(ValueError, match="unknown sampler 'euler': choose one of ddpm, ddim, dpmsolver\\+\\+"):
        make_scheduler("euler", tr, 10)
    with pytest.raises(ValueError, match="num_inference_steps must be in \\[1, 1000\\]"):
        make_scheduler("ddim", tr, 1001)
    with pytest.raises(TypeError, match="unexpected option\\(s\\) for the 'ddpm' sampler: eta"):
        make_scheduler("ddpm", tr, 10, eta=0.5)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        make_scheduler("ddim", tr, 10, prediction_type="flow")
    with pytest.raises(TypeError, match="train_scheduler must be the MONAI"):
        make_scheduler("ddim", object(), 10)
    with pytest.raises(ValueError, match="timestep 5 is not one of this scheduler's timesteps"):
        ddim = make_scheduler("ddim", tr, 10)
        ddim.step(torch.zeros(1, 1, 2, 2), 5, torch.zeros(1, 1, 2, 2))
