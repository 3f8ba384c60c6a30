"""Parity fixtures: tiny random Stable Diffusion pipelines and diffusers' outputs for them.

Regenerate (from the repository root; needs torch, diffusers, transformers, numpy, safetensors):

    python tests/parity/make_fixtures.py

It writes tests/parity/fixtures/<name>/ for name in (sd1, sd2):
  - the pipeline in diffusers layout (StableDiffusionPipeline.save_pretrained, no safety checker);
    sd2's tokenizer/ keeps only vocab.json + merges.txt so the Rust importer's BPE builder is tested;
  - ref/*.npy: fixed inputs and diffusers' outputs, all float32, computed on the CPU:
      text_hidden.npy   text encoder last_hidden_state for ref/inputs.json "text_ids"
      unet_sample.npy, unet_context.npy (+ "unet_timesteps") -> unet_out.npy
      vae_latent.npy -> vae_out.npy            (vae.decode, the latent already unscaled)
      pipe_latents.npy -> pipe_image.npy       (4 DDIM steps, guidance 5, output_type="np")
      pipe_final_latents.npy                   (the same run with output_type="latent")
  - ref/inputs.json: the ids, timesteps and pipeline arguments;
  - ref/tokens.json: 50 prompts and transformers' CLIPTokenizer ids (padding to 77, truncation).

The Rust side is tests/parity.rs; tests/parity/check_onnx.py checks the ONNX export.
Everything is seeded, so a rerun gives identical files on the same library versions.
"""
import json
import sys
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, LatentConsistencyModelPipeline, LCMScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
import diffusers.schedulers.scheduling_lcm as lcm_mod
from make_lcm_fixture import NoiseGen
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
MAX_LEN = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

CORPUS = """
a photograph of an astronaut riding a horse on the moon
a red cat sitting on a mat, digital art, highly detailed
an oil painting of a lighthouse at sunset by the sea
a small house in the mountains with snow and pine trees
portrait of a woman with long hair, studio lighting, 85mm
the city skyline at night with neon lights and rain
a bowl of fruit on a wooden table, still life painting
a dragon flying over a castle, fantasy illustration
a cute dog wearing sunglasses at the beach
a futuristic car driving through a desert landscape
watercolor painting of flowers in a glass vase
an ancient temple in the jungle covered with vines
a cup of coffee and a book on a rainy morning
a robot playing chess with an old man in the park
green hills under a blue sky with white clouds
""".strip().splitlines()

PROMPTS = [
    "",
    "a cat",
    "A Photograph of an Astronaut riding a Horse",
    "a red cat, sitting on a mat!",
    "hello, world!!! ... ???",
    "it's a dog's life, isn't it? we'll see; they've gone",
    "café naïve résumé — déjà vu",
    "東京の夜景 with neon",
    "emoji 🚀🔥 and symbols © ® ™ ±",
    "numbers 1234567890 and 3.14159 and 1,000,000",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nhere",
    "UPPER CASE SHOUTING",
    "hyphen-ated words and under_scores",
    "(parentheses) [brackets] {braces} <angles>",
    "a+b=c; x*y/z; 50% off #hashtag @mention",
    "quotes \"double\" and 'single' and `back`",
    "unknownwordxyzzy qwertyuiop",
    "a " * 100,
    "the quick brown fox jumps over the lazy dog " * 10,
    "a photograph of an astronaut riding a horse on the moon, " * 5,
    "<|startoftext|> literal special tokens <|endoftext|>",
    "mixed: Ünïcödé, ελληνικά, русский, العربية",
    "fullwidth ＡＢＣ and ligature ﬁ",
    "combining e\u0301 vs precomposed é",
    "zero\u200bwidth and nbsp\u00a0space",
    "watercolor painting of flowers in a glass vase",
    "oil painting, by greg rutkowski, trending on artstation",
    "8k uhd, dslr, soft lighting, high quality, film grain",
    "!!!",
    "a",
    "...",
    "a dragon... flying?! over (the) castle",
    "coffee & book & rain",
    "snake_case_prompt_with_many_words_joined",
    "CamelCasePromptWithoutSpaces",
    "digits 0 1 2 3 4 5 6 7 8 9",
    "12:30 pm on 2024-01-01",
    "email me at someone@example.com",
    "https://example.com/path?query=1",
    "dog\u3000cat",
    "small house; big mountain; pine trees",
    "a\u00adsoft hyphen",
    "tab\t\t\tseparated",
    "a cute dog wearing sunglasses at the beach",
    "robot vs. old man — chess!",
    "green hills under a blue sky with white clouds",
    "the end.",
    "repeated!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    "ÀÉÎÕÜ àéîõü ß",
]
assert len(PROMPTS) == 50


def bytes_to_unicode():
    """CLIP's (and GPT-2's) reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(corpus, n_merges):
    """A CLIP-style BPE vocabulary (words end in </w>) learned from `corpus`."""
    b2u = bytes_to_unicode()
    words = Counter()
    for line in corpus:
        for w in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", line.lower()):
            chars = [b2u[b] for b in w.encode("utf-8")]
            chars[-1] += "</w>"
            words[tuple(chars)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += c
        words = merged
    vocab = list(b2u.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    return {t: i for i, t in enumerate(vocab)}, merges


def randomize(module, seed):
    """Weights that exercise every parameter: matrices ~ N(0, 1/fan_in), norm scales 1 +- 0.1,
    biases and shifts +- 0.1 (default inits zero many of them, which would hide mapping bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def configs(name, vocab_size, ids):
    common_unet = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    if name in ("sd1", "lcm"):
        unet = dict(
            common_unet,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,
        )
        if name == "lcm":
            # A guidance-distilled UNet as LCM's: the scale enters through an 8-wide embedding.
            unet["time_cond_proj_dim"] = 8
        text = dict(hidden_act="quick_gelu")
        sched = dict(prediction_type="epsilon", timestep_spacing="leading")
        pad = EOS
    else:
        unet = dict(
            common_unet,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=[2, 4],
            use_linear_projection=True,
            upcast_attention=True,
        )
        text = dict(hidden_act="gelu")
        sched = dict(prediction_type="v_prediction", timestep_spacing="trailing")
        pad = "!"
    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[pad],
        **text,
    )
    vae = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    sched = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **sched,
    )
    return unet, text, vae, sched, pad


def save(path, arr):
    np.save(path, np.ascontiguousarray(arr, dtype=np.float32))


def build(name, seed):
    torch.manual_seed(seed)
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    vocab, merges = learn_bpe(CORPUS, 300)
    unet_cfg, text_cfg, vae_cfg, sched_cfg, pad = configs(name, len(vocab), vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad, model_max_length=MAX_LEN)
    text_encoder = CLIPTextModel(text_cfg).eval()
    unet = UNet2DConditionModel(**unet_cfg).eval()
    vae = AutoencoderKL(**vae_cfg).eval()
    randomize(text_encoder, seed + 1)
    randomize(unet, seed + 2)
    randomize(vae, seed + 3)
    pipe_class = LatentConsistencyModelPipeline if name == "lcm" else StableDiffusionPipeline
    scheduler = (LCMScheduler if name == "lcm" else DDIMScheduler)(**sched_cfg)
    pipe = pipe_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    tok_dir = out / "tokenizer"
    if name == "sd2":
        # Leave only vocab.json + merges.txt (+ configs): the importer must build the BPE itself.
        (tok_dir / "tokenizer.json").unlink(missing_ok=True)
        (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
        (tok_dir / "merges.txt").write_text("\n".join(lines) + "\n")
    # Reload, so the references come from exactly what was saved.
    pipe = pipe_class.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = out / "ref"
    ref.mkdir()
    g = torch.Generator().manual_seed(seed + 10)

    tok = pipe.tokenizer
    enc = lambda ps: tok(ps, padding="max_length", max_length=MAX_LEN, truncation=True)["input_ids"]
    token_ids = enc(PROMPTS)
    (ref / "tokens.json").write_text(json.dumps({"prompts": PROMPTS, "ids": token_ids}, ensure_ascii=False, indent=0))

    inputs = {}
    text_prompts = ["a red cat, sitting on a mat!", "東京 at night 🚀"]
    text_ids = enc(text_prompts)
    inputs["text_ids"] = text_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(torch.tensor(text_ids))[0]
    save(ref / "text_hidden.npy", hidden)

    sample = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, MAX_LEN, 32, generator=g)
    timesteps = [981.0, 37.0]
    inputs["unet_timesteps"] = timesteps
    cond = None
    if name == "lcm":
        # The guidance input as the LCM pipeline makes it: w = scale - 1, embedded.
        w = [4.0, 0.5]
        inputs["unet_w"] = w
        cond = pipe.get_guidance_scale_embedding(torch.tensor(w), embedding_dim=8)
    with torch.no_grad():
        eps = pipe.unet(sample, torch.tensor(timesteps), encoder_hidden_states=context,
                        timestep_cond=cond).sample
    save(ref / "unet_sample.npy", sample)
    save(ref / "unet_context.npy", context)
    save(ref / "unet_out.npy", eps)

    latent = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        image = pipe.vae.decode(latent).sample
    save(ref / "vae_latent.npy", latent)
    save(ref / "vae_out.npy", image)

    latents = torch.randn(1, 4, 8, 8, generator=g)
    args = dict(prompt="a red cat, sitting on a mat!", num_inference_steps=4, guidance_scale=5.0, height=16, width=16)
    inputs["pipe"] = args
    if name == "lcm":
        # LCM noises between steps: inject the stream our pipeline draws that noise from
        # (NoiseGen(seed + 1), seed 0), so both runs see the same noise.
        inputs["pipe_noise_seed"] = 1
        stream = NoiseGen(1)
        lcm_mod.randn_tensor = lambda shape, generator=None, device=None, dtype=None: \
            torch.from_numpy(stream.sample(int(np.prod(shape)))).reshape(shape).to(dtype)
    with torch.no_grad():
        img = pipe(**args, latents=latents.clone(), output_type="np").images
        if name == "lcm":
            stream.__init__(1)
        fin = pipe(**args, latents=latents.clone(), output_type="latent").images
    save(ref / "pipe_latents.npy", latents)
    save(ref / "pipe_image.npy", img)
    save(ref / "pipe_final_latents.npy", fin)
    (ref / "inputs.json").write_text(json.dumps(inputs, ensure_ascii=False, indent=1))
    assert token_ids[0][:2] == [vocab[BOS], vocab[EOS]], "the reloaded tokenizer lost its vocabulary"
    print(name, "ok:", sum(f.stat().st_size for f in out.rglob("*") if f.is_file()), "bytes")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    # Names on the command line build only those (default: all).
    seeds = {"sd1": 100, "sd2": 200, "lcm": 300}
    for name in sys.argv[1:] or list(seeds):
        build(name, seeds[name])
