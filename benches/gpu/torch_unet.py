"""Baseline for `ldm bench --backend vulkan` on a workstation GPU: diffusers' SD-1.5 UNet with
random weights in PyTorch CUDA fp16, timed the same way (median of N evaluations after warm-up).

    python3 benches/gpu/torch_unet.py --latent 64 --batch 1 --iters 20
Prints one JSON line. Needs torch with CUDA and diffusers (no weights are downloaded).
"""
import argparse, json, statistics, time

import torch
from diffusers import UNet2DConditionModel

p = argparse.ArgumentParser()
p.add_argument("--latent", type=int, default=64)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--iters", type=int, default=20)
p.add_argument("--dtype", default="fp16")
a = p.parse_args()
dtype = {"fp16": torch.float16, "fp32": torch.float32}[a.dtype]

# runwayml/stable-diffusion-v1-5 unet/config.json
unet = UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
).to("cuda", dtype).eval()
x = torch.randn(a.batch, 4, a.latent, a.latent, device="cuda", dtype=dtype)
t = torch.full((a.batch,), 500, device="cuda")
ctx = torch.randn(a.batch, 77, 768, device="cuda", dtype=dtype)
times = []
with torch.no_grad():
    for i in range(a.iters + 3):
        torch.cuda.synchronize()
        s = time.perf_counter()
        unet(x, t, ctx)
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - s) * 1e3)
print(json.dumps({
    "framework": f"torch {torch.__version__}", "device": torch.cuda.get_device_name(),
    "dtype": a.dtype, "latent": a.latent, "batch": a.batch,
    "unet_ms_per_eval": statistics.median(times),
    "params": sum(p.numel() for p in unet.parameters()),
}))
