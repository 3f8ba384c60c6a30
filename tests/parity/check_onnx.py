"""Runs the ONNX export of a parity fixture with onnxruntime and compares it with diffusers'
recorded outputs (tests/parity/fixtures/<name>/ref). Not run by CI (needs onnxruntime).

    cargo build --release -p ldm-host
    ldm-host import --diffusers tests/parity/fixtures/sd1 -o /tmp/sd1.ldm --onnx /tmp/onnx-sd1
    python tests/parity/check_onnx.py /tmp/onnx-sd1 sd1

`import --onnx` exports the text encoder and UNet at batch 2 and the decoder at batch 1, at the
fixture's latent size, which are the shapes of the recorded inputs. Exits non-zero above 1e-4.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

TOL = 1e-4


def main(onnx_dir, name):
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
        sess = ort.InferenceSession(str(Path(onnx_dir) / f"{comp}.onnx"), providers=["CPUExecutionProvider"])
        (out,) = sess.run(["output"], feeds)
        err = float(np.abs(out - load(want)).max())
        worst = max(worst, err)
        print(f"{name} {comp}: onnxruntime {ort.__version__} vs diffusers max abs error {err:.2e}")
    sys.exit(0 if worst <= TOL else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
