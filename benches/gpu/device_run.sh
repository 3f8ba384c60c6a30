#!/usr/bin/env bash
# One-shot GPU measurement on a lent x86-64 GPU machine (no Rust toolchain there): carries the
# stripped `ldm` and `ldm-host` binaries (.devbin/bins.tar.xz), the Vulkan loader (.gl/*.deb)
# and the diffusers wheel (.whl/). Writes JSON results under $OUT.
#   Vulkan (ours):  SD-1.5-shaped UNet, random weights, 64x64 latents, f16 and q8 weight storage
#                   with --profile: per-op GPU timestamp breakdown and the plan's device memory
#   PyTorch:        diffusers' SD-1.5 UNet, random weights, CUDA fp16, same shape (the baseline)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nv" ] && export VK_DRIVER_FILES=$nv
mkdir -p /tmp/b && tar xJf .devbin/bins.tar.xz -C /tmp/b
/tmp/b/ldm devices 2>&1 | tee "$OUT/devices.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/devices.txt"

# Model files are made here (too big to carry); CPU work, overlapped with the PyTorch run.
( /tmp/b/ldm-host init --preset sd15 --dtype f16 -o /tmp/sd15-f16.ldm &&
  /tmp/b/ldm-host init --preset sd15 --dtype q8 -o /tmp/sd15-q8.ldm ) > "$OUT/init.log" 2>&1 &
init=$!
# SKIP_TORCH=1 skips the PyTorch baseline (already measured: 25.4 ms/eval on the H200) to spend
# the device time on the Vulkan runs only.
if [ "${SKIP_TORCH:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  for b in 1 2; do
    PYTHONPATH=/tmp/site python3 benches/gpu/torch_unet.py --latent 64 --batch $b --iters 20 \
      2>>"$OUT/torch.err" | tee -a "$OUT/torch.jsonl"
  done
fi
wait $init
for d in f16 q8; do
  timeout 200 /tmp/b/ldm bench --backend vulkan --model /tmp/sd15-$d.ldm --latent 64 --iters 10 \
    --skip-decoder --profile --json > "$OUT/vk-$d.json" 2> "$OUT/vk-$d.err"
  echo "vulkan $d rc=$?"; cat "$OUT/vk-$d.json"; tail -3 "$OUT/vk-$d.err"
done
# Kernel-variant A/B (issue 17): the same runs with the variants off (LDM_VULKAN_DISABLE): the
# f16 file without flash attention and f16 math (the older kernels), the q8 file without the
# int8 dot products. Compare unet_ms_per_eval and the attention share with vk-f16 / vk-q8.
LDM_VULKAN_DISABLE=flash,f16 timeout 200 /tmp/b/ldm bench --backend vulkan --model /tmp/sd15-f16.ldm \
  --latent 64 --iters 10 --skip-decoder --profile --json > "$OUT/vk-f16-novariants.json" 2> "$OUT/vk-f16-novariants.err"
echo "vulkan f16 without flash/f16 math rc=$?"
LDM_VULKAN_DISABLE=dot timeout 200 /tmp/b/ldm bench --backend vulkan --model /tmp/sd15-q8.ldm \
  --latent 64 --iters 10 --skip-decoder --profile --json > "$OUT/vk-q8-nodot.json" 2> "$OUT/vk-q8-nodot.err"
echo "vulkan q8 without int8 dot rc=$?"
# The per-op breakdown as tables (from the JSON's unet_profile; no extra device run).
for d in f16 q8 f16-novariants q8-nodot; do
  python3 - "$OUT/vk-$d.json" <<'PY' | tee "$OUT/vk-$d-profile.txt"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no JSON in {sys.argv[1]}: {e}")
print(f"{r['model']}: {r['unet_ms_per_eval']:.1f} ms/eval, device memory {r.get('unet_device_mb')} MiB")
p = r.get("unet_profile") or {}
for t in p.get("ops", []):
    print(f"{t['op']:<18} {t['count']:>5} {t['total_ms']:>10.3f} ms {100 * t['share']:>6.1f}%")
print("slowest steps:")
for t in p.get("slowest", []):
    print(f"{t['ms']:>10.3f} ms  {t['step']}")
PY
done
