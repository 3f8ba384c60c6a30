#!/usr/bin/env python3
"""Side-by-side CPU baseline: the same UNet (same weights, same shapes) timed in onnxruntime and
in `ldm bench --backend cpu` (tract), in one run on one machine. Run through
benches/ort_vs_tract.sh, which builds the binaries first.

For each latent side and batch (1, and 2 = one classifier-free-guidance call):
  1. `ldm-host export --onnx --components unet` writes the UNet of that shape (external data
     when over protobuf's 2 GiB; an SD-1.5 UNet at f32 is 3.4 GB), cached by model and shape;
  2. onnxruntime (CPU provider, intra_op_num_threads = cores, sequential execution, all graph
     optimizations) runs it in a child process: one warm-up, then --iters timed evaluations;
  3. `ldm bench --backend B --json --skip-decoder` times the UNet the same way (one warm-up,
     median of --iters) for each B of --backends (default `cpu`), with any extra arguments from
     $LDM_BENCH_ARGS (e.g. a weight-storage option, to compare modes).
Steps 2 and 3 alternate for --rounds rounds (default 3); each engine's time is the median over
rounds and the ratio is the median of the per-round ratios, so that a machine whose speed drifts
over minutes does not favour whichever engine ran while it was fast.
Both get zeros for the sample and context and t = 500 for every batch element, as `ldm bench`
does. Peak RSS is each child's ru_maxrss, measured the same way for both; the two never run at
the same time. GFLOP counts are `ldm bench`'s (2 x the graph's multiply-adds).

On a shared machine (other people's builds), each measurement waits for the other processes to
go idle (--quiet-wait), samples how many cores they kept busy during its timed part (/proc/stat
minus the child's own CPU time), and is redone (--retries) when that exceeds a quarter core; the
least contended attempt is kept, and rows that stayed contended are starred.

Results: a table on stdout and JSON in benches/results/ort-vs-tract-<date>[-<label>].json.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def busy_cpu_s():
    """CPU seconds all processes have spent busy since boot, from /proc/stat (None elsewhere)."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    v = [int(x) for x in f[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait_s, log):
    """Waits (up to max_wait_s) until other processes use under a quarter of one core, so a
    measurement does not start in the middle of someone's build on a shared machine."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0 = busy_cpu_s()
        if b0 is None:
            return
        time.sleep(3)
        others = (busy_cpu_s() - b0) / 3
        if others < 0.25 or time.monotonic() > deadline:
            if others >= 0.25:
                print(f"  machine still busy ({others:.1f} cores in use); measuring anyway",
                      file=sys.stderr)
            return
        print(f"  waiting: other processes use {others:.1f} cores", file=log, flush=True)


def child_cpu_s(pid):
    """CPU seconds process pid (all its threads) has used so far; None once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 0, utime and stime fields 11 and 12.
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(cmd, log, env=None):
    """Runs cmd; returns (stdout, peak RSS in MiB of that process alone, seconds, samples).
    os.wait4 gives the child's own rusage, where RUSAGE_CHILDREN would be the maximum over every
    child so far (the ldm bench run and the ORT run must not share one figure). samples are
    (time, busy CPU seconds of the whole machine, CPU seconds of the child) twice a second, for
    `others_busy`: whether other processes competed for the cores while it ran."""
    t0 = time.monotonic()
    samples = []
    stop = threading.Event()
    with tempfile.TemporaryFile() as out:
        print("+ " + shlex.join(str(c) for c in cmd), file=log, flush=True)
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=log,
                             env=None if env is None else {**os.environ, **env})

        def sample():
            while not stop.is_set():
                m, c = busy_cpu_s(), child_cpu_s(p.pid)
                if m is not None and c is not None:
                    samples.append((time.monotonic(), m, c))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, ru = os.wait4(p.pid, 0)
        stop.set()
        sampler.join()
        # Recorded so Popen never waits on the already-reaped pid.
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {shlex.join(str(c) for c in cmd)}")
    m = busy_cpu_s()
    if m is not None:
        samples.append((time.monotonic(), m, ru.ru_utime + ru.ru_stime))
    # ru_maxrss is in KiB on Linux.
    return text, ru.ru_maxrss / 1024.0, time.monotonic() - t0, samples


def others_busy(samples, tail_s):
    """Cores other processes kept busy, on average, over the last tail_s seconds of a run (its
    timed part: the warm-up and timed evaluations come last in both children). None without
    /proc."""
    if len(samples) < 2:
        return None
    end = samples[-1]
    first = next((x for x in samples if x[0] >= end[0] - tail_s), samples[0])
    if first is end:
        first = samples[-2]
    dt = end[0] - first[0]
    return max(0.0, ((end[1] - first[1]) - (end[2] - first[2])) / dt)


def contended(others):
    """A warning for the table when other processes kept more than a quarter core busy."""
    return "" if others is None or others < 0.25 else f"  (CONTENDED: others used {others:.1f} cores)"


def ort_worker(a):
    """Child mode: time one exported UNet in onnxruntime; prints one JSON object."""
    import numpy as np
    import onnxruntime as ort

    t0 = time.monotonic()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.ort_worker, so, providers=["CPUExecutionProvider"])
    load_s = time.monotonic() - t0
    feeds = {}
    for i in sess.get_inputs():
        # The export has static shapes; only `timestep` is not all zeros (t = 500, as ldm bench).
        fill = 500.0 if i.name == "timestep" else 0.0
        feeds[i.name] = np.full(i.shape, fill, dtype=np.float32)
    sess.run(["output"], feeds)  # warm-up: first-run allocations and kernel selection
    times = []
    for _ in range(max(a.iters, 1)):
        t = time.monotonic()
        sess.run(["output"], feeds)
        times.append(time.monotonic() - t)
    # `ldm bench`'s "median": the upper middle of the sorted times (the slower of two).
    times.sort()
    print(
        json.dumps(
            {
                "onnxruntime": ort.__version__,
                "session_s": load_s,
                "ms_per_eval": times[len(times) // 2] * 1e3,
                "ms_all": [x * 1e3 for x in times],
                "threads": a.threads,
            }
        )
    )


def export_unet(a, model, side, batch, log):
    """Exports (or reuses) the UNet of this shape; returns the .onnx path."""
    d = Path(a.work) / "onnx" / f"{Path(model).stem}-b{batch}-l{side}"
    onnx = d / "unet.onnx"
    st, tool = Path(model).stat(), Path(a.ldm_host).stat()
    # Redone when the model or the exporter changes (the copy keeps the build's mtime).
    stamp = {"model": str(Path(model).resolve()), "size": st.st_size, "mtime": st.st_mtime,
             "ldm_host": [tool.st_size, tool.st_mtime]}
    stamp_file = d / "stamp.json"
    if onnx.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        print(f"  reusing {onnx}", file=sys.stderr)
        return onnx, 0.0
    d.mkdir(parents=True, exist_ok=True)
    cmd = [a.ldm_host, "export", "--onnx", d, "-m", model, "--batch", batch, "--latent-size", side,
           "--components", "unet"]
    _, rss, secs, _ = run_measured(cmd, log)
    print(f"  exported {onnx} in {secs:.0f} s (peak RSS {rss:.0f} MiB)", file=sys.stderr)
    stamp_file.write_text(json.dumps(stamp))
    return onnx, secs


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a .ldm model; default: an SD-1.5-shaped f32 model with "
                    "random weights, made once by `ldm-host init --preset sd15 --dtype f32`")
    ap.add_argument("--latents", default="32", help="comma-separated latent sides (e.g. 32,64)")
    ap.add_argument("--batches", default="1,2", help="comma-separated UNet batches")
    ap.add_argument("--backends", default="cpu",
                    help="comma-separated `ldm bench --backend` values to time against onnxruntime; "
                         "`B@VAR=value[@VAR2=value]` runs backend B with those environment variables "
                         "(e.g. cpu,cpu@LDM_CPU_CONV=im2col,cpu-expanded); onnxruntime runs once per round")
    ap.add_argument("--iters", type=int,
                    help="timed evaluations after one warm-up, of which the median is reported "
                    "[default: 5 when every latent is at most 32, else 2: an SD-1.5 64x64 eval "
                    "takes ~20 s on 2 cores]")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="onnxruntime intra-op threads (tract uses one per core)")
    ap.add_argument("--work", default=str(ROOT / "target" / "ort-bench"),
                    help="folder for the default model and the ONNX exports")
    ap.add_argument("--ldm", default=str(ROOT / "target" / "release" / "ldm"))
    ap.add_argument("--ldm-host", default=str(ROOT / "target" / "release" / "ldm-host"))
    ap.add_argument("--label", default="", help="suffix of the results file name")
    ap.add_argument("--results", default=str(ROOT / "benches" / "results"))
    ap.add_argument("--quiet-wait", type=float, default=600,
                    help="seconds to wait, before each measurement, for other processes to go "
                    "idle (a shared build machine); then it measures anyway and flags the row")
    ap.add_argument("--retries", type=int, default=2,
                    help="times a contended measurement is redone before its least contended "
                    "attempt is kept")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of onnxruntime and ours per shape; the ratio is the "
                    "median of the per-round ratios")
    ap.add_argument("--ort-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ort_worker:
        return ort_worker(a)

    extra = shlex.split(os.environ.get("LDM_BENCH_ARGS", ""))
    backends = [b for b in a.backends.split(",") if b]
    latents = [int(x) for x in a.latents.split(",") if x]
    batches = [int(x) for x in a.batches.split(",") if x]
    Path(a.work).mkdir(parents=True, exist_ok=True)
    log_path = Path(a.work) / "ort_vs_tract.log"
    log = open(log_path, "a")
    print(f"child commands' stderr: {log_path}", file=sys.stderr)
    # Copies of the binaries: other builds in the shared target/ must not swap them mid-run.
    # The source state, taken now, next to the build (the .sh builds just before): the binaries
    # are built from the working tree, which may hold uncommitted changes, and other people may
    # commit while this runs.
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    # benches/ (this script, its results) does not go into the binaries.
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                            "--", ".", ":!benches"],
                           capture_output=True, text=True).stdout.strip() != ""
    built = datetime.datetime.fromtimestamp(Path(a.ldm).stat().st_mtime).isoformat(timespec="seconds")
    bins = Path(a.work) / "bin"
    bins.mkdir(exist_ok=True)
    ldm, ldm_host = bins / "ldm", bins / "ldm-host"
    shutil.copy2(a.ldm, ldm)
    shutil.copy2(a.ldm_host, ldm_host)
    a.ldm_host = ldm_host
    model = a.model
    if model is None:
        model = str(Path(a.work) / "sd15-f32.ldm")
        if not Path(model).exists():
            print(f"making {model} (4.1 GB)", file=sys.stderr)
            run_measured([a.ldm_host, "init", "--preset", "sd15", "--dtype", "f32", "-o", model], log)

    def measure(cmd, env=None):
        """Runs a measurement after waiting for a quiet machine; one contended during its timed
        part is redone up to --retries times, and the least contended attempt is kept."""
        best = None
        for attempt in range(a.retries + 1):
            wait_quiet(a.quiet_wait, log)
            text, rss, _, samples = run_measured(cmd, log, env)
            r = json.loads(text)
            ms = r.get("unet_ms_per_eval", r.get("ms_per_eval", 0.0))
            # One warm-up and --iters timed evaluations end each run, plus a second of slack.
            others = others_busy(samples, (a.iters + 1) * ms / 1e3 + 1.0)
            # Every attempt's result and contention, for the record.
            print(f"  attempt {attempt}: peak RSS {rss:.0f} MiB, others {others} cores: "
                  + " ".join(text.split()), file=log, flush=True)
            if best is None or (others or 0) < (best[2] or 0):
                best = (text, rss, others)
            if others is None or others < 0.25:
                break
            if attempt < a.retries:
                print(f"  contended ({others:.1f} cores used by others), measuring again", file=sys.stderr)
        return best

    if not latents or not batches or not backends:
        raise SystemExit("--latents, --batches and --backends need at least one value each")
    if a.iters is None:
        a.iters = 5 if max(latents) <= 32 else 2
    rows = []
    for side in latents:
        for batch in batches:
            print(f"latent {side}x{side}, batch {batch}:", file=sys.stderr)
            onnx, export_s = export_unet(a, model, side, batch, log)
            # Every round runs each engine once: the speed of a shared machine drifts over
            # minutes, and a drift that one engine's runs took alone would read as a difference
            # between engines. The ratio is the median of the per-round ratios, each from runs
            # a few seconds apart.
            ort_rounds, ours_rounds = [], {b: [] for b in backends}
            engines = [None, *backends]  # None: onnxruntime
            for rnd in range(a.rounds):
                # The order rotates by round: whichever engine ran right after onnxruntime
                # (3.4-7 GB of RSS and its own copy of the weights in the page cache) was the
                # slower one in most rounds, whatever engine it was.
                shift = rnd % len(engines)
                for backend in engines[shift:] + engines[:shift]:
                    if backend is None:
                        text, ort_rss, ort_others = measure(
                            [sys.executable, __file__, "--ort-worker", onnx, "--threads", a.threads,
                             "--iters", a.iters])
                        o = json.loads(text)
                        ort_rounds.append((o, ort_rss, ort_others))
                        print(f"  round {rnd + 1}/{a.rounds}: onnxruntime {o['ms_per_eval']:.0f} ms/eval, "
                              f"peak RSS {ort_rss:.0f} MiB{contended(ort_others)}", file=sys.stderr)
                        continue
                    # `cpu@LDM_CPU_CONV=im2col`: the backend with environment settings, so
                    # two settings of one backend alternate with onnxruntime in one run.
                    name, *settings = backend.split("@")
                    env = dict(kv.split("=", 1) for kv in settings)
                    cmd = [ldm, "bench", "-m", model, "--backend", name, "--json", "--skip-decoder",
                           "--latent", side, "--batch", batch, "--iters", a.iters, *extra]
                    text, ours_rss, ours_others = measure(cmd, env)
                    r = json.loads(text)
                    ours_rounds[backend].append((r, ours_rss, ours_others))
                    print(f"  round {rnd + 1}/{a.rounds}: {backend:<11} {r['unet_ms_per_eval']:.0f} ms/eval, "
                          f"peak RSS {ours_rss:.0f} MiB{contended(ours_others)}", file=sys.stderr)
            ort_ms = statistics.median(x[0]["ms_per_eval"] for x in ort_rounds)
            o = ort_rounds[-1][0]
            ort_rss = max(x[1] for x in ort_rounds)
            ort_others = max((x[2] or 0) for x in ort_rounds)
            for backend in backends:
                runs = ours_rounds[backend]
                ours_ms = statistics.median(x[0]["unet_ms_per_eval"] for x in runs)
                ratios = [ours[0]["unet_ms_per_eval"] / ort[0]["ms_per_eval"]
                          for ours, ort in zip(runs, ort_rounds)]
                r = runs[-1][0]
                gflop = r["unet_gflop"]
                rows.append({
                    "latent": side,
                    "batch": batch,
                    "backend": backend,
                    "gflop": gflop,
                    "rounds": a.rounds,
                    "ours_ms": ours_ms,
                    "ours_ms_rounds": [x[0]["unet_ms_per_eval"] for x in runs],
                    "ours_gflops": gflop / (ours_ms / 1e3),
                    "ours_prepare_ms": r["unet_prepare_ms"],
                    "ours_peak_rss_mb": max(x[1] for x in runs),
                    "ours_other_cores_busy": max((x[2] or 0) for x in runs),
                    "ours_report": r,
                    "ort_ms": ort_ms,
                    "ort_ms_rounds": [x[0]["ms_per_eval"] for x in ort_rounds],
                    "ort_ms_all": [x[0]["ms_all"] for x in ort_rounds],
                    "ort_gflops": gflop / (ort_ms / 1e3),
                    "ort_session_s": o["session_s"],
                    "ort_peak_rss_mb": ort_rss,
                    "ort_other_cores_busy": ort_others,
                    "ratio_rounds": ratios,
                    "ratio_ours_over_ort": statistics.median(ratios),
                    "onnx": str(onnx),
                    "export_s": export_s,
                })

    hdr = (f"{'latent':>7} {'batch':>5} {'backend':>12} {'GFLOP':>7} | {'ours ms':>9} {'GFLOP/s':>8} {'RSS MiB':>8} | "
           f"{'ORT ms':>9} {'GFLOP/s':>8} {'RSS MiB':>8} | {'ours/ORT':>8}")
    print(f"\nUNet eval, {Path(model).name}, {os.cpu_count()} cores ({cpu_name()}), "
          f"onnxruntime {o['onnxruntime']}, ldm bench args {extra or '[]'}")
    print(hdr)
    print("-" * len(hdr))
    for x in rows:
        print(f"{x['latent']:>4}x{x['latent']:<2} {x['batch']:>5} {x['backend']:>12} {x['gflop']:>7.1f} | "
              f"{x['ours_ms']:>9.0f} {x['ours_gflops']:>8.1f} {x['ours_peak_rss_mb']:>8.0f} | "
              f"{x['ort_ms']:>9.0f} {x['ort_gflops']:>8.1f} {x['ort_peak_rss_mb']:>8.0f} | "
              f"{x['ratio_ours_over_ort']:>8.2f}"
              + (" *" if max(x["ours_other_cores_busy"] or 0, x["ort_other_cores_busy"] or 0) >= 0.25 else ""))
    if any(max(x["ours_other_cores_busy"] or 0, x["ort_other_cores_busy"] or 0) >= 0.25 for x in rows):
        print("* other processes kept over a quarter core busy during one of the two runs: "
              "the times are not clean")

    today = datetime.date.today().isoformat()
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "working_tree_dirty": dirty,
        "ldm_built": built,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "model": str(model),
        "model_bytes": Path(model).stat().st_size,
        "iters": a.iters,
        "rounds": a.rounds,
        "ort": {"version": o["onnxruntime"], "intra_op_num_threads": a.threads,
                "inter_op_num_threads": 1, "execution_mode": "sequential",
                "graph_optimization_level": "ORT_ENABLE_ALL"},
        "ldm_backends": backends,
        "ldm_bench_args": extra,
        "rows": rows,
    }
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    name = f"ort-vs-tract-{today}" + (f"-{a.label}" if a.label else "") + ".json"
    (res / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {res / name}")


if __name__ == "__main__":
    main()
