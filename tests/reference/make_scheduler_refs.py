"""Reference scheduler outputs from diffusers for jstyle's DDPM, DPM-Solver++(2M) and Euler ancestral
schedulers. Runs in the checker env (torch), never jstyle's.

    python tests/reference/make_scheduler_refs.py OUT_DIR [TINY_REF_DIR]

OUT_DIR/sched_refs.npz holds, per case: timesteps (and sigmas) for 10/25/50 steps, init_noise_sigma, a full
10-step trajectory (prev_sample and pred_original_sample of every step) driven by a fake model, add_noise
(and get_velocity); stochastic steps use noise taken from numpy, handed to diffusers by replacing its
`randn_tensor`. With TINY_REF_DIR (tests/reference/make_tiny.py's output), OUT_DIR/sched_pipe_refs.npz
holds StableDiffusionPipeline images of the tiny sd2 model with DPM-Solver++ and Euler ancestral.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
)
from diffusers.schedulers import scheduling_ddpm, scheduling_euler_ancestral_discrete

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# dynamic thresholding: s between 1 and 1.5, so some steps clip at 1 and some rescale by the quantile
THRESH = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
# name -> (class, kwargs, noise): noise "given" = a list of arrays, "rng" = numpy default_rng(5) draws
CASES = {
    "ddpm_eps": (DDPMScheduler, dict(**SD, clip_sample=False, steps_offset=1), "given"),
    "ddpm_v_smalllog": (DDPMScheduler, dict(**SD, prediction_type="v_prediction", variance_type="fixed_small_log",
                                            timestep_spacing="trailing"), "rng"),
    "ddpm_x0_large_cos": (DDPMScheduler, dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                                              variance_type="fixed_large", timestep_spacing="linspace",
                                              clip_sample_range=2.0), "given"),
    "dpm_eps": (DPMSolverMultistepScheduler, dict(**SD), None),
    "dpm_v_leading": (DPMSolverMultistepScheduler, dict(**SD, prediction_type="v_prediction",
                                                        timestep_spacing="leading", steps_offset=1), None),
    "dpm_x0_trailing_sigmamin": (DPMSolverMultistepScheduler, dict(
        **SD, prediction_type="sample", timestep_spacing="trailing", final_sigmas_type="sigma_min",
        lower_order_final=False), None),
    "dpm_order1_cos_clipped": (DPMSolverMultistepScheduler, dict(beta_schedule="squaredcos_cap_v2", solver_order=1,
                                                                 lambda_min_clipped=-5.1), None),
    "ddim_eps_thresh": (DDIMScheduler, dict(**SD, **THRESH, steps_offset=1), None),
    "ddim_v_thresh_trailing": (DDIMScheduler, dict(**SD, **THRESH, prediction_type="v_prediction",
                                                   timestep_spacing="trailing"), None),
    "ddpm_eps_thresh": (DDPMScheduler, dict(**SD, **THRESH), "given"),
    "dpm_eps_thresh": (DPMSolverMultistepScheduler, dict(**SD, **THRESH), None),
    "euler_a_eps": (EulerAncestralDiscreteScheduler, dict(**SD), "given"),
    "euler_a_v_leading": (EulerAncestralDiscreteScheduler, dict(**SD, prediction_type="v_prediction",
                                                                timestep_spacing="leading", steps_offset=1), "rng"),
    "euler_a_eps_trailing": (EulerAncestralDiscreteScheduler, dict(beta_schedule="linear",
                                                                   timestep_spacing="trailing"), "given"),
}
SHAPE = (2, 4, 8, 8)
STEPS = 10
MODEL_A, MODEL_B = np.float32(0.5), np.float32(0.5)  # fake model: out = A * x_in + B * base (numpy float32)
PIPE_PROMPT = "a Dolphin in style_03"


class NoiseFeed:
    """Replaces diffusers' randn_tensor: hands out a fixed list of arrays, or draws from a numpy generator."""

    def __init__(self, arrays: list[np.ndarray] | None = None, rng: np.random.Generator | None = None):
        self.arrays, self.rng, self.calls = arrays, rng, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, **_):
        if self.arrays is not None:
            arr = self.arrays[self.calls]
        else:
            arr = self.rng.standard_normal(tuple(shape)).astype(np.float32)
        self.calls += 1
        return torch.from_numpy(arr).to(dtype or torch.float32)


_ORIGINAL_RANDN = scheduling_ddpm.randn_tensor


def patch_noise(feed: NoiseFeed | None) -> None:
    """Point the DDPM and Euler ancestral modules' randn_tensor at `feed` (None: back to diffusers')."""
    for module in (scheduling_ddpm, scheduling_euler_ancestral_discrete):
        module.randn_tensor = feed or _ORIGINAL_RANDN


def trajectory(sched, x_init, base, noises, noise_mode) -> dict[str, np.ndarray]:
    sched.set_timesteps(STEPS)
    feed = NoiseFeed(arrays=noises) if noise_mode == "given" else NoiseFeed(rng=np.random.default_rng(5))
    patch_noise(feed)
    x = torch.from_numpy(x_init) * sched.init_noise_sigma
    prev, x0, feed_calls = [], [], []
    for k, t in enumerate(sched.timesteps):
        feed.calls = k  # "given": step k uses noises[k] (a DDPM step at t = 0 draws none)
        x_in = sched.scale_model_input(x, t).numpy()
        out = MODEL_A * x_in + MODEL_B * base
        res = sched.step(torch.from_numpy(out), t, x)
        x = res.prev_sample
        prev.append(x.numpy())
        pred = getattr(res, "pred_original_sample", None)
        x0.append((pred if pred is not None else sched.model_outputs[-1]).numpy())
        feed_calls.append(feed.calls - k)
    patch_noise(None)
    return {"prev": np.stack(prev), "x0": np.stack(x0), "noise_drawn": np.array(feed_calls)}


def scheduler_refs(out: Path) -> None:
    rng = np.random.default_rng(11)
    arrays = {
        "x_init": rng.standard_normal(SHAPE).astype(np.float32),
        "base": rng.standard_normal(SHAPE).astype(np.float32),
        "noises": rng.standard_normal((STEPS, *SHAPE)).astype(np.float32),
        "clean": rng.standard_normal(SHAPE).astype(np.float32),
        "model_ab": np.array([MODEL_A, MODEL_B]),
    }
    for name, (cls, kwargs, noise_mode) in CASES.items():
        arrays[f"{name}/config"] = np.array(json.dumps({"class": cls.__name__, "noise": noise_mode, **kwargs}))
        sched = cls(**kwargs)
        for n in (10, 25, 50):
            sched.set_timesteps(n)
            arrays[f"{name}/timesteps_{n}"] = sched.timesteps.numpy()
            if hasattr(sched, "sigmas"):
                arrays[f"{name}/sigmas_{n}"] = sched.sigmas.numpy()
        sched = cls(**kwargs)
        traj = trajectory(sched, arrays["x_init"], arrays["base"], list(arrays["noises"]), noise_mode)
        arrays[f"{name}/init_noise_sigma"] = np.float32(sched.init_noise_sigma)
        for key, value in traj.items():
            arrays[f"{name}/{key}"] = value
        sched = cls(**kwargs)
        sched.set_timesteps(STEPS)
        t = sched.timesteps[[0, 6]]
        clean, noise = torch.from_numpy(arrays["clean"]), torch.from_numpy(arrays["noises"][0])
        arrays[f"{name}/add_noise_t"] = t.numpy()
        arrays[f"{name}/add_noise"] = sched.add_noise(clean, noise, t).numpy()
        if hasattr(sched, "get_velocity"):
            arrays[f"{name}/velocity"] = sched.get_velocity(clean, noise, t).numpy()
    np.savez(out / "sched_refs.npz", **arrays)


def pipeline_refs(out: Path, tiny: Path) -> None:
    """Tiny sd2 (v-prediction) text-to-image, 4 steps at 16x16 with CFG, from make_tiny's fixed latents."""
    latents = torch.from_numpy(np.load(tiny / "sd2_refs.npz")["pipe_latents"])
    pipe = StableDiffusionPipeline.from_pretrained(tiny / "sd2", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    arrays, config = {}, pipe.scheduler.config
    for name, cls in (("dpm++2m", DPMSolverMultistepScheduler), ("euler_a", EulerAncestralDiscreteScheduler)):
        pipe.scheduler = cls.from_config(config)
        patch_noise(NoiseFeed(rng=np.random.default_rng(0)))  # jstyle draws with generator=default_rng(0)
        with torch.no_grad():
            arrays[name] = pipe(PIPE_PROMPT, height=16, width=16, num_inference_steps=4, guidance_scale=7.5,
                                latents=latents.clone(), output_type="np").images
        patch_noise(None)
    np.savez(out / "sched_pipe_refs.npz", **arrays)


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    scheduler_refs(out)
    if len(argv) > 2:
        pipeline_refs(out, Path(argv[2]))
    (out / "DONE").write_text("ok\n")


if __name__ == "__main__":
    main(sys.argv)
