#!/usr/bin/env python3
"""Regenerates the README's pictures: the sample rows of the default model and of its distilled
student (models/shapes-32-samples.png, models/shapes-32-lcm-samples.png) and the img2img, inpainting and super-resolution examples in models/examples/.

Runs the real CLIs (target/release/ldm and ldm-host, built first) on held-out shapes scenes; Pillow
only cuts the inputs and lays the results side by side, 4x nearest-neighbour so 32 px is visible.
Usage: python3 models/examples.py   (needs `pip install pillow`)
"""
import os
import subprocess
import sys
import tempfile

from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LDM = os.path.join(ROOT, "target/release/ldm")
HOST = os.path.join(ROOT, "target/release/ldm-host")
OUT = os.path.join(ROOT, "models/examples")
SIZE, GAP, ZOOM = 32, 2, 4


def run(*args):
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def tile(grid, k, cols):
    x, y = GAP + (k % cols) * (SIZE + GAP), GAP + (k // cols) * (SIZE + GAP)
    return grid.crop((x, y, x + SIZE, y + SIZE))


def strip(images, path):
    """Images of any size, each scaled to 128 px tall by nearest neighbour, 8 px apart."""
    h = SIZE * ZOOM
    scaled = [im.convert("RGB").resize((im.width * h // im.height, h), Image.NEAREST) for im in images]
    w = sum(im.width for im in scaled) + 8 * (len(scaled) - 1)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width + 8
    canvas.save(path)
    print("wrote", path)


# The README's sample prompts for the default model (seed 0, its default guidance and steps).
SAMPLE_PROMPTS = [
    "a red circle",
    "a large blue square",
    "a small green triangle",
    "a yellow diamond on a black background",
    "a purple cross in the top left",
    "a large orange circle in the center",
    "a red square above a blue circle",
    "a green circle left of a yellow square",
]


def samples(p, model, out):
    """One row of the sample prompts from `model` with its own defaults (the distilled student
    runs its stored 4 LCM steps)."""
    images = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        run(LDM, "generate", prompt, "-m", os.path.join(ROOT, model), "-s", "0", "-o", p(f"sample{i}.png"), "-q")
        images.append(Image.open(p(f"sample{i}.png")).convert("RGB").resize((96, 96), Image.NEAREST))
    canvas = Image.new("RGB", (8 * 96 + 7 * 4, 96), (255, 255, 255))
    for i, im in enumerate(images):
        canvas.paste(im, (i * 100, 0))
    path = os.path.join(ROOT, out)
    canvas.save(path)
    print("wrote", path)


def previews(p):
    """The linear previews of a 20-step run (every 5th step) beside the final image, and the
    last frame of a 320x240 PNG display."""
    prompt = "a red circle above a blue square"
    run(LDM, "generate", prompt, "-s", "0", "-o", p("final.png"), "-q", "--preview-every", "5",
        "--preview-out", p("previews"), "--display", "png:" + os.path.join(OUT, "display.png") + ":320x240")
    steps = [Image.open(os.path.join(p("previews"), f"step-{k:04d}.png")) for k in (5, 10, 15, 20)]
    strip(steps + [Image.open(p("final.png"))], os.path.join(OUT, "previews.png"))


def main():
    os.makedirs(OUT, exist_ok=True)
    t = tempfile.mkdtemp()
    p = lambda n: os.path.join(t, n)
    samples(p, "models/shapes-32.ldm", "models/shapes-32-samples.png")
    samples(p, "models/shapes-32-lcm.ldm", "models/shapes-32-lcm-samples.png")
    previews(p)
    # Held-out scenes 0 and 1: "a large red triangle in the top left on a black background" and
    # "a small red circle above a large orange cross on a white background".
    run(HOST, "dataset", "preview", "--split", "held-out", "-n", "2", "-o", p("ho.png"))
    grid = Image.open(p("ho.png")).convert("RGB")
    scene0, scene1 = tile(grid, 0, 2), tile(grid, 1, 2)
    scene0.save(p("scene0.png"))
    scene1.save(p("scene1.png"))

    # img2img with the default text-to-image model.
    prompt = "a large blue triangle in the top left on a black background"
    run(LDM, "generate", prompt, "--init-image", p("scene0.png"), "--strength", "0.6", "-o", p("i2i.png"), "-q")
    strip([scene0, Image.open(p("i2i.png"))], os.path.join(OUT, "img2img.png"))

    # Inpainting: hide the top-left object under a box and ask for something else there.
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 17, 17), fill=255)
    mask.save(p("mask.png"))
    model = os.path.join(ROOT, "models/shapes-inpaint-32.ldm")
    for name, prompt in [
        ("same", "a large red triangle in the top left on a black background"),
        ("new", "a large green circle in the top left on a black background"),
    ]:
        run(LDM, "inpaint", "--model", model, "--image", p("scene0.png"), "--mask", p("mask.png"), prompt,
            "-o", p(f"inpaint-{name}.png"), "-q")
    shown = scene0.copy()
    shown.paste((128, 128, 128), (0, 0, 18, 18))
    strip([scene0, shown, Image.open(p("inpaint-same.png")), Image.open(p("inpaint-new.png"))],
          os.path.join(OUT, "inpaint.png"))

    # 4x super-resolution of an 8x8 box-downsampled scene, against bicubic.
    low = scene1.reduce(4)
    low.save(p("low.png"))
    run(LDM, "upscale", "--model", os.path.join(ROOT, "models/shapes-sr-32.ldm"), p("low.png"), "-o", p("sr.png"), "-q")
    bicubic = low.resize((SIZE, SIZE), Image.BICUBIC)
    strip([low, bicubic, Image.open(p("sr.png")), scene1], os.path.join(OUT, "upscale.png"))


if __name__ == "__main__":
    sys.exit(main())
