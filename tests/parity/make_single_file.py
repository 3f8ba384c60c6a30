"""Single-file fixture: the sd1 parity pipeline in the original (CompVis) checkpoint layout.

Regenerate (from the repository root, after make_fixtures.py; needs torch, diffusers, numpy,
safetensors):

    python tests/parity/make_single_file.py

It reads tests/parity/fixtures/sd1/{unet,vae,text_encoder}/*.safetensors, renames every tensor to
the name the original Stable Diffusion code gives it (the reverse of diffusers'
convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint / convert_ldm_clip_checkpoint) and writes
tests/parity/fixtures/sd1/single_file.safetensors. The VAE attention projections are stored as
1x1 convolutions and a few buffers real checkpoints carry (position_ids, the DDPM schedule,
model_ema.*) are added, so the importer's reshape and skip paths are exercised.

The reverse mapping is not trusted on its own: the file is loaded back with diffusers'
from_single_file (config = the sd1 folder) and must reproduce ref/{text_hidden,unet_out,vae_out}.npy
within 1e-5, i.e. diffusers' forward mapping checks ours. The Rust side is
tests/parity_single_file.rs.
"""
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
SD1 = HERE / "fixtures" / "sd1"
OUT = SD1 / "single_file.safetensors"


def resnet_unet(rest):
    # diffusers ResnetBlock2D -> ldm ResBlock sub-module names.
    for new, old in [
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("time_emb_proj", "emb_layers.1"),
        ("conv_shortcut", "skip_connection"),
    ]:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(rest)


def unet_name(k, cfg):
    lpb = cfg["layers_per_block"]
    ups_with_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    mod, _, leaf = k.rpartition(".")
    if mod in fixed:
        return f"{fixed[mod]}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * (lpb + 1) + j}.0.{resnet_unet(rest)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * (lpb + 1) + j}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
        b = int(m[1])
        return f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", k):
        return f"middle_block.{2 * int(m[1])}.{resnet_unet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", k):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{b * (lpb + 1) + j}.0.{resnet_unet(rest)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{b * (lpb + 1) + j}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
        b = int(m[1])
        # The upsampler follows the resnet (and the attention, when the block has one).
        slot = 2 if ups_with_attn[b] else 1
        return f"output_blocks.{b * (lpb + 1) + lpb}.{slot}.conv.{m[2]}"
    raise KeyError(k)


def vae_name(k, cfg):
    n_up = len(cfg["up_block_types"])
    k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(.*)", k):
        return f"encoder.down.{m[1]}.block.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", k):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(.*)", k):
        return f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
        return f"decoder.up.{n_up - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k):
        rest = m[2]
        for new, old in [
            ("group_norm.", "norm."),
            ("to_q.", "q."),
            ("to_k.", "k."),
            ("to_v.", "v."),
            ("to_out.0.", "proj_out."),
        ]:
            if rest.startswith(new):
                return f"{m[1]}.mid.attn_1.{old}{rest[len(new):]}"
        raise KeyError(k)
    return k  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def build():
    ucfg = json.loads((SD1 / "unet/config.json").read_text())
    vcfg = json.loads((SD1 / "vae/config.json").read_text())
    out = {}

    def put(name, t):
        assert name not in out, name
        out[name] = t.contiguous()

    for k, t in load_file(SD1 / "unet/diffusion_pytorch_model.safetensors").items():
        put("model.diffusion_model." + unet_name(k, ucfg), t)
    for k, t in load_file(SD1 / "vae/diffusion_pytorch_model.safetensors").items():
        name = "first_stage_model." + vae_name(k, vcfg)
        # The original AttnBlock projects with 1x1 convolutions.
        if ".mid.attn_1." in name and t.ndim == 2:
            t = t[:, :, None, None]
        put(name, t)
    for k, t in load_file(SD1 / "text_encoder/model.safetensors").items():
        if not k.startswith("text_model."):
            k = "text_model." + k  # transformers 5 drops the prefix; SD checkpoints keep it
        put("cond_stage_model.transformer." + k, t)
    # Buffers real SD-1.x checkpoints carry; not weights.
    put("cond_stage_model.transformer.text_model.embeddings.position_ids", torch.arange(77)[None])
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    put("betas", betas.float())
    put("alphas_cumprod", torch.cumprod(1 - betas, 0).float())
    put("model_ema.decay", torch.tensor(0.9999))
    put("model_ema.num_updates", torch.tensor(0, dtype=torch.int32))
    return out


def validate():
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    ref = SD1 / "ref"
    inputs = json.loads((ref / "inputs.json").read_text())
    pipe = StableDiffusionPipeline.from_single_file(
        str(OUT), config=str(SD1), local_files_only=True, safety_checker=None
    )
    errs = {}
    with torch.no_grad():
        hidden = pipe.text_encoder(torch.tensor(inputs["text_ids"]))[0]
        errs["text"] = np.abs(hidden.numpy() - np.load(ref / "text_hidden.npy")).max()
        eps = pipe.unet(
            torch.from_numpy(np.load(ref / "unet_sample.npy")),
            torch.tensor(inputs["unet_timesteps"]),
            encoder_hidden_states=torch.from_numpy(np.load(ref / "unet_context.npy")),
        ).sample
        errs["unet"] = np.abs(eps.numpy() - np.load(ref / "unet_out.npy")).max()
        img = pipe.vae.decode(torch.from_numpy(np.load(ref / "vae_latent.npy"))).sample
        errs["vae"] = np.abs(img.numpy() - np.load(ref / "vae_out.npy")).max()
    print("diffusers from_single_file vs the sd1 references, max abs:", errs)
    assert all(e <= 1e-5 for e in errs.values()), errs
    # Every tensor diffusers loaded must equal the diffusers-folder one (nothing left at init).
    for comp, file in [
        ("unet", "unet/diffusion_pytorch_model.safetensors"),
        ("vae", "vae/diffusion_pytorch_model.safetensors"),
    ]:
        want = load_file(SD1 / file)
        got = getattr(pipe, comp).state_dict()
        assert set(want) <= set(got), set(want) - set(got)
        for k, t in want.items():
            assert torch.equal(got[k], t), f"{comp}.{k} differs"
    print("unet and vae state dicts equal the diffusers folder's, bit for bit")


if __name__ == "__main__":
    save_file(build(), str(OUT), metadata={"format": "pt"})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    validate()
