#!/usr/bin/env python3
"""LoRA parity fixtures on the sd1 tiny pipeline (fixtures/sd1), in both layouts users have:

  - fixtures/lora/kohya.safetensors: kohya-ss / sd-scripts naming (`lora_unet_<module_with_underscores>`
    and `lora_te_...`, `.lora_down.weight`, `.lora_up.weight`, `.alpha`), on UNet attention,
    projection, feed-forward and resnet (LoCon 3x3 conv) layers and text encoder attention and MLP;
  - fixtures/lora/peft/pytorch_lora_weights.safetensors: what diffusers' `save_lora_weights`
    writes from PEFT adapters (`unet.<module>.lora_A.weight` / `lora_B.weight`, lora_alpha in the
    file's metadata);
  - fixtures/lora/ref/<layout>_{unet_out,text_hidden}.npy: diffusers' outputs after
    `load_lora_weights` + `fuse_lora(lora_scale=...)` (scales in ref/inputs.json) for sd1's
    recorded UNet and text encoder inputs (fixtures/sd1/ref), and a LoRA whose shapes fit another
    base model (fixtures/lora/other_base.safetensors, for the shape-mismatch error).

Before saving, every targeted weight of the fused model is checked against W + scale * alpha/r * B A,
so a key that diffusers skipped would fail here rather than make the fixture vacuous.

Usage: python3 tests/parity/make_lora_fixture.py   (torch, diffusers, peft, safetensors)
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SD1 = HERE / "fixtures" / "sd1"
OUT = HERE / "fixtures" / "lora"
RANK = 4

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def load():
    pipe = StableDiffusionPipeline.from_pretrained(SD1, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def targets(model, names):
    """Module paths of `model` whose last components match one of `names`."""
    out = []
    for path, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and any(
                path == n or path.endswith("." + n) for n in names):
            out.append((path, m))
    return out


def kohya_file(pipe, g):
    sd, deltas = {}, {}
    for prefix, comp, model, names in [("lora_unet_", "unet", pipe.unet, UNET_TARGETS),
                                       ("lora_te_", "text_encoder", pipe.text_encoder, TE_TARGETS)]:
        for path, m in targets(model, names):
            w = m.weight
            # kohya names text encoder layers from CLIPTextModel's `text_model.` (transformers
            # 5 dropped that wrapper from the module tree; released LoRAs keep it).
            kpath = path if comp == "unet" or path.startswith("text_model.") else "text_model." + path
            base = prefix + kpath.replace(".", "_")
            if isinstance(m, torch.nn.Conv2d):
                down = torch.randn(RANK, w.shape[1], *w.shape[2:], generator=g) * 0.2
                up = torch.randn(w.shape[0], RANK, 1, 1, generator=g) * 0.2
            else:
                down = torch.randn(RANK, w.shape[1], generator=g) * 0.2
                up = torch.randn(w.shape[0], RANK, generator=g) * 0.2
            # kohya saves fp16; the deltas below use the rounded values, as diffusers will.
            down, up = down.half(), up.half()
            alpha = torch.tensor(float(RANK) / 2 + 1).half()  # alpha != rank: the scale matters
            sd[base + ".lora_down.weight"] = down
            sd[base + ".lora_up.weight"] = up
            sd[base + ".alpha"] = alpha
            down, up, alpha = down.float(), up.float(), alpha.float()
            deltas[(comp, path)] = (alpha / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    return sd, deltas


def check_fused(pipe, base, deltas, scale, layout):
    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    bases = {"unet": base.unet, "text_encoder": base.text_encoder}
    for (comp, path), d in deltas.items():
        got = models[comp].get_submodule(path).weight
        want = bases[comp].get_submodule(path).weight + scale * d
        err = (got - want).abs().max().item()
        assert err < 1e-5, f"{layout}: {comp}.{path} not fused as expected ({err})"


def reference(pipe, layout):
    inputs = json.loads((SD1 / "ref" / "inputs.json").read_text())
    ids = torch.tensor(inputs["text_ids"])
    sample = torch.from_numpy(np.load(SD1 / "ref" / "unet_sample.npy"))
    context = torch.from_numpy(np.load(SD1 / "ref" / "unet_context.npy"))
    ts = torch.tensor(inputs["unet_timesteps"])
    hidden = pipe.text_encoder(ids)[0]
    eps = pipe.unet(sample, ts, encoder_hidden_states=context).sample
    np.save(OUT / "ref" / f"{layout}_text_hidden.npy", hidden.numpy().astype(np.float32))
    np.save(OUT / "ref" / f"{layout}_unet_out.npy", eps.numpy().astype(np.float32))


def main():
    torch.set_grad_enabled(False)
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "ref").mkdir(parents=True)
    g = torch.Generator().manual_seed(1900)
    base = load()
    scales = {"kohya": 0.8, "peft": 0.6}

    # kohya layout
    sd, deltas = kohya_file(base, g)
    save_file(sd, OUT / "kohya.safetensors")
    pipe = load()
    pipe.load_lora_weights(OUT, weight_name="kohya.safetensors")
    pipe.fuse_lora(lora_scale=scales["kohya"])
    check_fused(pipe, base, deltas, scales["kohya"], "kohya")
    reference(pipe, "kohya")

    # diffusers/PEFT layout, written by diffusers itself
    pipe = load()
    u_cfg = LoraConfig(r=RANK, lora_alpha=2 * RANK + 2, init_lora_weights=False,
                       target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1"])
    t_cfg = LoraConfig(r=RANK, lora_alpha=RANK // 2 + 1, init_lora_weights=False,
                       target_modules={"q_proj", "v_proj", "out_proj", "fc1"})
    pipe.unet.add_adapter(u_cfg)
    for n, p in pipe.unet.named_parameters():
        if "lora_" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    # transformers' own add_adapter wants a newer peft than PyPI has here, so the text encoder's
    # adapter is written in PEFT's naming directly (what get_peft_model_state_dict returns).
    te_layers = {}
    for path, m in targets(pipe.text_encoder, t_cfg.target_modules):
        te_layers[f"{path}.lora_A.weight"] = torch.randn(RANK, m.weight.shape[1], generator=g) * 0.2
        te_layers[f"{path}.lora_B.weight"] = torch.randn(m.weight.shape[0], RANK, generator=g) * 0.2
    peft_dir = OUT / "peft"
    StableDiffusionPipeline.save_lora_weights(
        peft_dir,
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=te_layers,
        unet_lora_adapter_metadata=u_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=t_cfg.to_dict(),
        safe_serialization=True,
    )
    deltas = {}
    for comp, layers, cfg in [("unet", get_peft_model_state_dict(pipe.unet), u_cfg),
                              ("text_encoder", te_layers, t_cfg)]:
        for k, a in layers.items():
            if k.endswith(".lora_A.weight"):
                path = k[: -len(".lora_A.weight")]
                b = layers[path + ".lora_B.weight"]
                w = base.unet if comp == "unet" else base.text_encoder
                shape = w.get_submodule(path).weight.shape
                deltas[(comp, path)] = (cfg.lora_alpha / RANK) * (b.flatten(1) @ a.flatten(1)).reshape(shape)
    pipe = load()
    pipe.load_lora_weights(peft_dir)
    pipe.fuse_lora(lora_scale=scales["peft"])
    check_fused(pipe, base, deltas, scales["peft"], "peft")
    assert any(c == "text_encoder" for c, _ in deltas) and len(deltas) > 20, len(deltas)
    reference(pipe, "peft")

    # A LoRA for another base model: the same names, a wider first attention (two layers kept:
    # one that fits and the one that does not).
    full, _ = kohya_file(base, g)
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_"
    sd = {n: t for n, t in full.items() if n.startswith(k + "q.") or n.startswith(k + "k.")}
    sd[k + "q.lora_down.weight"] = torch.randn(RANK, 24, generator=g).half()
    save_file(sd, OUT / "other_base.safetensors")
    (OUT / "ref" / "inputs.json").write_text(json.dumps({"scales": scales, "rank": RANK}, indent=1) + "\n")
    print("ok:", sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file()), "bytes")


if __name__ == "__main__":
    main()
