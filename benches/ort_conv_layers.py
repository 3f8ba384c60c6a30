#!/usr/bin/env python3
"""onnxruntime's own time for single 3x3 convolution layers, to set beside
`cargo run --release --example conv_algos -- --shapes ...` (same shapes, same machine, same run).

    python3 benches/ort_conv_layers.py "2,320,320,32;2,1280,1280,16" [--reps 5]

Each shape is `batch,in,out,side` (stride 1, padding 1, f32, random weights). One session per
layer with 2 intra-op threads and every graph optimization (MLAS then runs its NCHWc direct
convolution with the weight packed once at session creation); one warm-up run, then the median
of `--reps`. Needs `pip install onnx onnxruntime numpy`.
"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def layer(b, c, o, side):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((o, c, 3, 3)) * 0.1).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, o, side, side])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", help="batch,in,out,side;...")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(f"{'shape b,c->o,side':<22} {'ort ms':>9}   (onnxruntime {ort.__version__})")
    for s in a.shapes.split(";"):
        b, c, o, side = (int(t) for t in s.split(","))
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(layer(b, c, o, side).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        x = np.random.default_rng(2).standard_normal((b, c, side, side)).astype(np.float32)
        sess.run(None, {"x": x})
        times = []
        for _ in range(a.reps):
            t = time.monotonic()
            sess.run(None, {"x": x})
            times.append((time.monotonic() - t) * 1e3)
        times.sort()
        print(f"{f'{b},{c}->{o},{side}':<22} {times[len(times) // 2]:>9.2f}")


if __name__ == "__main__":
    main()
