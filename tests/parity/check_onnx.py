"""Runs the ONNX export of a parity fixture with onnxruntime and compares it with diffusers'
recorded outputs (tests/parity/fixtures/<name>/ref). Not run by CI (needs onnxruntime).

    cargo build --release -p ldm-host
    ldm-host import --diffusers tests/parity/fixtures/sd1 -o /tmp/sd1.ldm --onnx /tmp/onnx-sd1
    python tests/parity/check_onnx.py /tmp/onnx-sd1 sd1

`import --onnx` exports the text encoder and UNet at batch 2 and the decoder at batch 1, at the
fixture's latent size, which are the shapes of the recorded inputs. Exits non-zero above 1e-4.

    python tests/parity/check_onnx.py /tmp/onnx-ext sd1 --same-as /tmp/onnx-sd1

also runs the models of a second folder on the same inputs and requires identical outputs: how
tests/onnx_export.rs checks an `export --onnx --external-data` folder against the inline one.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

TOL = 1e-4


def run(onnx_dir, comp, feeds):
    sess = ort.InferenceSession(str(Path(onnx_dir) / f"{comp}.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["output"], feeds)
    return out


def main(onnx_dir, name, same_as=None):
    ref = Path(__file__).resolve().parent / "fixtures" / name / "ref"
    inputs = json.loads((ref / "inputs.json").read_text())
    load = lambda f: np.load(ref / f)
    cases = {
        "text_encoder": ({"input_ids": np.array(inputs["text_ids"], dtype=np.int64)}, "text_hidden.npy"),
        "unet": (
            {
                "sample": load("unet_sample.npy"),
                "timestep": np.array(inputs["unet_timesteps"], dtype=np.float32),
                "context": load("unet_context.npy"),
            },
            "unet_out.npy",
        ),
        "decoder": ({"latent": load("vae_latent.npy")}, "vae_out.npy"),
    }
    worst = 0.0
    for comp, (feeds, want) in cases.items():
        out = run(onnx_dir, comp, feeds)
        err = float(np.abs(out - load(want)).max())
        worst = max(worst, err)
        print(f"{name} {comp}: onnxruntime {ort.__version__} vs diffusers max abs error {err:.2e}")
        if same_as is not None:
            # Same graph, same weights, same runtime: only where the weights are stored differs,
            # so any difference at all is a storage bug.
            other = run(same_as, comp, feeds)
            diff = float(np.abs(out - other).max())
            print(f"{name} {comp}: {onnx_dir} vs {same_as} max abs difference {diff:.2e}")
            if diff != 0.0:
                worst = float("inf")
    sys.exit(0 if worst <= TOL else 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx_dir")
    ap.add_argument("name")
    ap.add_argument("--same-as", help="a second export folder whose outputs must be identical")
    a = ap.parse_args()
    main(a.onnx_dir, a.name, a.same_as)
