#!/usr/bin/env python3
"""Scheduler parity fixtures: diffusers' own schedulers, against which src/sampler is checked.

Usage (from the repository root; torch, diffusers, numpy installed):

    python3 tests/parity/make_scheduler_fixtures.py

Writes
  - tests/parity/fixtures/schedulers.json: each case steps one diffusers scheduler class (with the
    settings named in the case) on fixed inputs: the initial sample is the project's seeded noise
    (src/sampler/noise.rs, ported in make_lcm_fixture.py) times init_noise_sigma, the fake model
    outputs come from another seed, and stochastic schedulers draw their noise from the stream
    that produced the initial sample (as our pipeline's sampler does from its own stream). It
    records the timesteps and every step's output. Read by tests/sampler_parity.rs.
  - tests/parity/fixtures/schedulers/<variant>/: the sd1 tiny pipeline (fixtures/sd1) run by
    diffusers with another scheduler: scheduler_config.json as the class's save_pretrained writes
    it, and ref/pipe_image.npy + ref/pipe_final_latents.npy for sd1's prompt and initial latents
    (ref/inputs.json holds the arguments). Stochastic ones get the stream our pipeline uses
    (NoiseGen(seed + 1), seed 0) injected. tests/sampler_parity.rs imports sd1 with each config
    in place of its own and compares images.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import (DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler,
                       StableDiffusionPipeline, UniPCMultistepScheduler)
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_mod
import diffusers.schedulers.scheduling_ddpm as ddpm_mod
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_mod
from make_lcm_fixture import NoiseGen

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
CLASSES = {
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "PNDMScheduler": PNDMScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DDPMScheduler": DDPMScheduler,
}


def inject(stream):
    """Make the stochastic schedulers' noise (DPM-Solver SDE, Euler ancestral, DDPM) come from
    `stream` (our generator's port)."""
    fake = lambda shape, generator=None, device=None, dtype=None: \
        torch.from_numpy(stream.sample(int(np.prod(shape)))).reshape(shape).to(dtype)
    dpm_mod.randn_tensor = fake
    euler_a_mod.randn_tensor = fake
    ddpm_mod.randn_tensor = fake


def case(cls_name, kwargs, steps, seed, n=16):
    s = CLASSES[cls_name](**SD, **kwargs)
    s.set_timesteps(steps)
    gen = NoiseGen(seed)
    x = gen.sample(n) * np.float32(s.init_noise_sigma)
    outs = NoiseGen(seed + 1000)
    model_outputs = [outs.sample(n) for _ in range(len(s.timesteps))]
    inject(gen)
    prev = []
    # Latent-shaped (batch 1, 4 channels), as UniPC's einsum needs.
    shape = (1, 4, n // 8, 2)
    xt = torch.from_numpy(x.copy()).reshape(shape)
    for i, t in enumerate(s.timesteps):
        s.scale_model_input(xt, t)
        xt = s.step(torch.from_numpy(model_outputs[i]).reshape(shape), t, xt, return_dict=False)[0]
        prev.append(xt.numpy().reshape(-1).astype(np.float64).tolist())
    return {
        "class": cls_name,
        "config": {**SD, **kwargs},
        "steps": steps,
        "seed": seed,
        "n": n,
        "init_noise_sigma": float(s.init_noise_sigma),
        "timesteps": [float(t) for t in s.timesteps],
        "x_init": x.tolist(),
        "model_outputs": [m.tolist() for m in model_outputs],
        "prev_samples": prev,
    }


CASES = [
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1), 5),
    ("EulerDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction"), 6),
    ("EulerDiscreteScheduler", dict(timestep_spacing="trailing", final_sigmas_type="sigma_min"), 4),
    ("HeunDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1), 4),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction"), 5),
    ("PNDMScheduler", dict(skip_prk_steps=True, timestep_spacing="leading", steps_offset=1), 5),
    ("PNDMScheduler", dict(skip_prk_steps=True, timestep_spacing="linspace",
                           prediction_type="v_prediction"), 6),
    ("PNDMScheduler", dict(skip_prk_steps=True, timestep_spacing="trailing", set_alpha_to_one=True), 4),
    ("PNDMScheduler", dict(timestep_spacing="leading", steps_offset=1), 6),
    ("PNDMScheduler", dict(timestep_spacing="linspace", prediction_type="v_prediction"), 5),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True, timestep_spacing="leading",
                                         steps_offset=1), 8),
    ("DPMSolverMultistepScheduler", dict(prediction_type="v_prediction"), 6),
    ("DPMSolverMultistepScheduler", dict(timestep_spacing="trailing", final_sigmas_type="sigma_min",
                                         lower_order_final=False), 5),
    ("DPMSolverMultistepScheduler", dict(final_sigmas_type="sigma_min", use_karras_sigmas=True), 20),
    ("DPMSolverMultistepScheduler", dict(lambda_min_clipped=-5.1), 7),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), 6),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++",
                                         prediction_type="v_prediction",
                                         final_sigmas_type="sigma_min"), 5),
    ("UniPCMultistepScheduler", dict(timestep_spacing="leading", steps_offset=1), 6),
    ("UniPCMultistepScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction"), 7),
    ("UniPCMultistepScheduler", dict(timestep_spacing="trailing", final_sigmas_type="sigma_min"), 5),
    ("UniPCMultistepScheduler", dict(final_sigmas_type="sigma_min", lower_order_final=False), 5),
    ("EulerAncestralDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1), 5),
    ("EulerAncestralDiscreteScheduler", dict(prediction_type="v_prediction"), 4),
    ("DPMSolverMultistepScheduler", dict(solver_order=1), 5),
    ("DPMSolverMultistepScheduler", dict(euler_at_final=True, lower_order_final=False,
                                         final_sigmas_type="sigma_min"), 6),
    ("UniPCMultistepScheduler", dict(solver_order=1), 5),
    ("UniPCMultistepScheduler", dict(disable_corrector=[0, 2]), 6),
    ("DDPMScheduler", dict(clip_sample=False, timestep_spacing="leading", steps_offset=1), 5),
    ("DDPMScheduler", dict(clip_sample=False, timestep_spacing="linspace",
                           prediction_type="v_prediction"), 4),
]

# Pipeline variants on the sd1 fixture: (name, class, settings, steps). SD-style settings.
SD_CFG = dict(**SD, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
VARIANTS = [
    ("euler", "EulerDiscreteScheduler", dict(), 5),
    ("euler_karras", "EulerDiscreteScheduler", dict(use_karras_sigmas=True, timestep_spacing="linspace"), 5),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), 6),
    ("heun", "HeunDiscreteScheduler", dict(), 4),
    ("pndm", "PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=False), 5),
    ("pndm_prk", "PNDMScheduler", dict(skip_prk_steps=False), 5),
    ("unipc", "UniPCMultistepScheduler", dict(timestep_spacing="trailing"), 5),
    ("euler_a", "EulerAncestralDiscreteScheduler", dict(), 5),
    ("ddpm", "DDPMScheduler", dict(clip_sample=False), 5),
    ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++",
                                                        use_karras_sigmas=True), 6),
]


def save(path, arr):
    np.save(path, np.ascontiguousarray(arr, dtype=np.float32))


def variant(name, cls_name, kwargs, steps):
    out = OUT / "schedulers" / name
    shutil.rmtree(out, ignore_errors=True)
    sched = CLASSES[cls_name](**{**SD_CFG, **kwargs})
    sched.save_pretrained(out)
    # Reload from what was saved, as a user's folder would be read.
    sched = CLASSES[cls_name].from_pretrained(out)
    pipe = StableDiffusionPipeline.from_pretrained(OUT / "sd1", scheduler=sched, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sd1_inputs = json.loads((OUT / "sd1" / "ref" / "inputs.json").read_text())
    args = dict(sd1_inputs["pipe"], num_inference_steps=steps)
    latents = torch.from_numpy(np.load(OUT / "sd1" / "ref" / "pipe_latents.npy"))
    ref = out / "ref"
    ref.mkdir()
    results = {}
    for output_type in ("np", "latent"):
        # The pipeline's sampler noise: NoiseGen(seed + 1) with seed 0.
        inject(NoiseGen(1))
        with torch.no_grad():
            results[output_type] = pipe(**args, latents=latents.clone(), output_type=output_type).images
    save(ref / "pipe_image.npy", results["np"])
    save(ref / "pipe_final_latents.npy", results["latent"])
    (ref / "inputs.json").write_text(json.dumps({"pipe": args, "pipe_noise_seed": 1}, indent=1) + "\n")
    print(name, "ok")


def main():
    torch.set_grad_enabled(False)
    cases = [case(c, kw, steps, seed=50 + i) for i, (c, kw, steps) in enumerate(CASES)]
    path = OUT / "schedulers.json"
    path.write_text(json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__,
                                "cases": cases}) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    for v in VARIANTS:
        variant(*v)


if __name__ == "__main__":
    main()
