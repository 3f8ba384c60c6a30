#!/usr/bin/env python3
"""Writes tests/parity/fixtures/lcm_scheduler.json: diffusers' LCMScheduler stepped on fixed
inputs, with its noise injection replaced by the project's seeded generator (src/sampler/noise.rs,
ported below), so the Rust LcmScheduler can be compared step by step with the same noise.

Usage: python3 tests/parity/make_lcm_fixture.py   (diffusers and torch installed)
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import LCMScheduler
import diffusers.schedulers.scheduling_lcm as lcm_mod

MASK = (1 << 64) - 1


class NoiseGen:
    """src/sampler/noise.rs: SplitMix64, uniform in (0, 1] from the top 53 bits, Box-Muller in
    f64 (cosine first, then sine), each rounded to f32."""

    def __init__(self, seed):
        self.state = seed & MASK
        self.spare = None

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def next_uniform(self):
        return ((self.next_u64() >> 11) + 1) * (1.0 / (1 << 53))

    def next_normal(self):
        if self.spare is not None:
            z, self.spare = self.spare, None
            return z
        u1, u2 = self.next_uniform(), self.next_uniform()
        r = math.sqrt(-2.0 * math.log(u1))
        theta = 2.0 * math.pi * u2
        self.spare = float(np.float32(r * math.sin(theta)))
        return float(np.float32(r * math.cos(theta)))

    def sample(self, n):
        return np.array([self.next_normal() for _ in range(n)], dtype=np.float32)


def case(prediction, steps, seed, n=64):
    s = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type=prediction)
    s.set_timesteps(steps)
    gen = NoiseGen(seed)
    x = gen.sample(n)
    outs = NoiseGen(seed + 1000)
    model_outputs = [outs.sample(n) for _ in range(steps)]
    # The scheduler's noise comes from the same stream as the initial sample, as in the pipeline.
    lcm_mod.randn_tensor = lambda shape, generator=None, device=None, dtype=None: \
        torch.from_numpy(gen.sample(int(np.prod(shape)))).reshape(shape).to(dtype)
    prev, denoised = [], []
    xt = torch.from_numpy(x.copy())
    for i, t in enumerate(s.timesteps):
        p, d = s.step(torch.from_numpy(model_outputs[i]), t, xt, return_dict=False)
        prev.append(p.numpy().tolist())
        denoised.append(d.numpy().tolist())
        xt = p
    return {
        "prediction": prediction,
        "steps": steps,
        "seed": seed,
        "n": n,
        "timesteps": [int(t) for t in s.timesteps],
        "x_init": x.tolist(),
        "model_outputs": [m.tolist() for m in model_outputs],
        "prev_samples": prev,
        "denoised": denoised,
    }


def main():
    cases = [case("epsilon", 4, 11), case("epsilon", 1, 12), case("v_prediction", 6, 13)]
    out = Path(__file__).parent / "fixtures" / "lcm_scheduler.json"
    out.write_text(json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__,
                               "cases": cases}) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
