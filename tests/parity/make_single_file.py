"""Single-file fixtures: the sd1 and sd2 parity pipelines in the original checkpoint layout.

Regenerate (from the repository root, after make_fixtures.py; needs torch, diffusers, numpy,
safetensors):

    python tests/parity/make_single_file.py

For name in (sd1, sd2) it reads tests/parity/fixtures/<name>/{unet,vae,text_encoder}/*.safetensors,
renames every tensor to the name the original Stable Diffusion code gives it (the reverse of
diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint / convert_ldm_clip_checkpoint /
convert_open_clip_checkpoint) and writes tests/parity/fixtures/<name>/single_file.safetensors.
The VAE attention projections are stored as 1x1 convolutions, sd2's text encoder in OpenCLIP form
(fused in_proj q/k/v, plus the unused last layer and text_projection real SD-2 files hold), and a
few buffers real checkpoints carry (position_ids, the DDPM schedule, model_ema.*) are added, so
the importer's reshape, split and skip paths are exercised.

The reverse mapping is not trusted on its own: each file is loaded back with diffusers'
from_single_file (config = the fixture folder) and must reproduce ref/{text_hidden,unet_out,
vae_out}.npy within 1e-5 and the folder's tensors bit for bit, i.e. diffusers' forward mapping
checks ours. The Rust side is tests/parity_single_file.rs.
"""
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent


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


def openclip_text(sd, layers):
    """transformers CLIPTextModel -> OpenCLIP (SD-2.x `cond_stage_model.model.*`) names."""
    out = {}
    sd = {k.removeprefix("text_model."): t for k, t in sd.items()}
    out["token_embedding.weight"] = sd.pop("embeddings.token_embedding.weight")
    out["positional_embedding"] = sd.pop("embeddings.position_embedding.weight")
    out["ln_final.weight"] = sd.pop("final_layer_norm.weight")
    out["ln_final.bias"] = sd.pop("final_layer_norm.bias")
    for i in range(layers):
        a = f"encoder.layers.{i}."
        o = f"transformer.resblocks.{i}."
        for leaf in ["weight", "bias"]:
            # OpenCLIP's nn.MultiheadAttention stores q, k, v stacked in one in_proj.
            out[o + f"attn.in_proj_{leaf}"] = torch.cat(
                [sd.pop(a + f"self_attn.{p}_proj.{leaf}") for p in "qkv"], 0
            )
            for theirs, ours in [
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ]:
                out[o + f"{theirs}.{leaf}"] = sd.pop(a + f"{ours}.{leaf}")
    assert not sd, sorted(sd)
    return out


def build(name, extra_layer):
    fix = HERE / "fixtures" / name
    ucfg = json.loads((fix / "unet/config.json").read_text())
    vcfg = json.loads((fix / "vae/config.json").read_text())
    tcfg = json.loads((fix / "text_encoder/config.json").read_text())
    out = {}

    def put(name, t):
        assert name not in out, name
        out[name] = t.contiguous()

    for k, t in load_file(fix / "unet/diffusion_pytorch_model.safetensors").items():
        put("model.diffusion_model." + unet_name(k, ucfg), t)
    for k, t in load_file(fix / "vae/diffusion_pytorch_model.safetensors").items():
        key = "first_stage_model." + vae_name(k, vcfg)
        # The original AttnBlock projects with 1x1 convolutions.
        if ".mid.attn_1." in key and t.ndim == 2:
            t = t[:, :, None, None]
        put(key, t)
    text = load_file(fix / "text_encoder/model.safetensors")
    if name == "sd1":
        for k, t in text.items():
            if not k.startswith("text_model."):
                k = "text_model." + k  # transformers 5 drops the prefix; SD checkpoints keep it
            put("cond_stage_model.transformer." + k, t)
        # A buffer real SD-1.x checkpoints carry; not a weight.
        put("cond_stage_model.transformer.text_model.embeddings.position_ids", torch.arange(77)[None])
    else:
        layers = tcfg["num_hidden_layers"]
        for k, t in openclip_text(text, layers).items():
            put("cond_stage_model.model." + k, t)
        d = tcfg["hidden_size"]
        g = torch.Generator().manual_seed(5)
        # SD-2.x conditions on the penultimate layer: real files hold one more layer, which the
        # diffusers config leaves out (num_hidden_layers 23 of 24), and the unused projection.
        put("cond_stage_model.model.text_projection", torch.randn(d, d, generator=g))
        if extra_layer:
            last = {
                k.replace(f"resblocks.{layers - 1}.", f"resblocks.{layers}."): torch.randn(
                    t.shape, generator=g
                )
                for k, t in out.items()
                if f".resblocks.{layers - 1}." in k
            }
            for k, t in last.items():
                put(k, t)
    # Buffers real checkpoints carry; not weights.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    put("betas", betas.float())
    put("alphas_cumprod", torch.cumprod(1 - betas, 0).float())
    put("model_ema.decay", torch.tensor(0.9999))
    put("model_ema.num_updates", torch.tensor(0, dtype=torch.int32))
    return out


def validate(name, path):
    from diffusers import StableDiffusionPipeline

    fix = HERE / "fixtures" / name
    ref = fix / "ref"
    inputs = json.loads((ref / "inputs.json").read_text())
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(fix), local_files_only=True, safety_checker=None
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
    print(f"{name}: diffusers from_single_file vs the references, max abs:", errs)
    assert all(e <= 1e-5 for e in errs.values()), errs
    # Every tensor diffusers loaded must equal the diffusers-folder one (nothing left at init).
    for comp, file in [
        ("unet", "unet/diffusion_pytorch_model.safetensors"),
        ("vae", "vae/diffusion_pytorch_model.safetensors"),
        ("text_encoder", "text_encoder/model.safetensors"),
    ]:
        want = load_file(fix / file)
        got = {k.removeprefix("text_model."): t for k, t in getattr(pipe, comp).state_dict().items()}
        for k, t in want.items():
            k = k.removeprefix("text_model.")
            assert k in got, f"{comp}.{k} not loaded"
            assert torch.equal(got[k], t), f"{comp}.{k} differs"
    print(f"{name}: unet, vae and text encoder equal the diffusers folder's, bit for bit")


if __name__ == "__main__":
    for name in ["sd1", "sd2"]:
        out = HERE / "fixtures" / name / "single_file.safetensors"
        save_file(build(name, extra_layer=True), str(out), metadata={"format": "pt"})
        print(f"wrote {out} ({out.stat().st_size} bytes)")
        try:
            validate(name, out)
        except Exception as e:  # noqa: BLE001
            if name != "sd2":
                raise
            # diffusers drops the unused last OpenCLIP layer only by its SD-2 index (23), so it
            # rejects the tiny fixture's extra layer: validate the same file without it.
            print(f"sd2 with the extra layer: diffusers says {type(e).__name__}: {str(e)[:200]}")
            tmp = out.with_suffix(".no_extra.safetensors")
            save_file(build(name, extra_layer=False), str(tmp), metadata={"format": "pt"})
            try:
                validate(name, tmp)
            finally:
                tmp.unlink()
