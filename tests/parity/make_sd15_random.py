"""A random-weight Stable-Diffusion-1.5-shaped diffusers folder, for the real-size benchmark
(issue 5): nothing is downloaded. Weights are PyTorch's default init, saved in float16 to halve
the 2 GB on disk; the tokenizer is the sd1 parity fixture's small CLIP BPE (ids < 49408, so the
ViT-L-shaped text encoder accepts them).

    python tests/parity/make_sd15_random.py /work/bench5/sd15-random
    ldm-host import --diffusers /work/bench5/sd15-random -o /work/bench5/sd15-f16.ldm --dtype f16
    ldm generate -m /work/bench5/sd15-f16.ldm --backend cpu --size 512x512 --steps 2 "a cat"
"""
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

out = Path(sys.argv[1])
torch.manual_seed(0)
fixture = Path(__file__).resolve().parent / "fixtures" / "sd1" / "tokenizer"
tokenizer = CLIPTokenizer.from_pretrained(fixture)
# runwayml/stable-diffusion-v1-5's component configs.
unet = UNet2DConditionModel(
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
vae = AutoencoderKL(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
text = CLIPTextModel(
    CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
)
scheduler = DDIMScheduler(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
pipe = StableDiffusionPipeline(
    vae=vae,
    text_encoder=text,
    tokenizer=tokenizer,
    unet=unet,
    scheduler=scheduler,
    safety_checker=None,
    feature_extractor=None,
    requires_safety_checker=False,
)
shutil.rmtree(out, ignore_errors=True)
pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
print("wrote", out, sum(f.stat().st_size for f in out.rglob("*") if f.is_file()), "bytes")
