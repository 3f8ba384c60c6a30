#!/usr/bin/env bash
# One-shot GPU training on a lent x86-64 GPU machine (no Rust toolchain there). Carries the
# stripped `ldm-host` built with `--features vulkan` (.devbin/train.tar.xz), the Vulkan loader
# (.gl/*.deb) and the stage-1 checkpoint and tokenizer (.devtrain/). Inside one command limit:
#   A. stage 1 continued from the shipped autoencoder, on the GPU and, as a fallback and a
#      speed baseline, on the CPU at the same time (same budget); the better PSNR is kept;
#   B. stage 2 for txt2img, sr and inpaint side by side on whichever device A measured faster,
#      each fitted to the same wall-clock budget (--max-seconds); txt2img checkpoints are
#      exported and evaluated along the way for the accuracy-vs-time curve;
#   C. q8 exports of the three models, logs and the new autoencoder under $OUT.
set -u
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
A_SECS=${A_SECS:-130}; B_SECS=${B_SECS:-250}
LOG=$OUT/run.log; exec > >(tee -a "$LOG") 2>&1
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nv" ] && export VK_DRIVER_FILES=$nv
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
mkdir -p /tmp/b && tar xJf .devbin/train.tar.xz -C /tmp/b
H=/tmp/b/ldm-host; W=/tmp/w; mkdir -p $W/gpu $W/cpu $W/curve $W/logs
cp .devtrain/ae.safetensors $W/gpu/ae.st; cp .devtrain/ae.safetensors $W/cpu/ae.st
TOK=.devtrain/tokenizer.json
D="--dataset shapes --image-size 32 --data-seed 0 --dataset-len 20000"

# SKIP_A=1: .devtrain/ae.safetensors is already the stage-1 result; stage 2 goes to the GPU.
if [ "${SKIP_A:-0}" = 1 ]; then
  cp .devtrain/ae.safetensors $W/ae.st; dev=gpu
else
echo "== A: stage 1 continued, GPU and CPU, ${A_SECS}s each ($(el)s)"
AE="train autoencoder --preset shapes $D --heldout 256 --steps 60000 --decay-start 3201 --lr 5e-4 --warmup 0 --kl-weight 1e-6 --seed 1 --ckpt-every 500 --resume --quiet --max-seconds $A_SECS"
$H $AE --batch 64 -o $W/gpu/ae.st --log $W/logs/ae-gpu.csv > $W/logs/ae-gpu.out 2>&1 &
pg=$!
LDM_TRAIN_DEVICE=cpu RAYON_NUM_THREADS=12 $H $AE --batch 32 -o $W/cpu/ae.st --log $W/logs/ae-cpu.csv > $W/logs/ae-cpu.out 2>&1 &
pc=$!
wait $pg; rg=$?; wait $pc; rc=$?
echo "A done ($(el)s): gpu rc=$rg cpu rc=$rc"; tail -n 2 $W/logs/ae-gpu.out $W/logs/ae-cpu.out
tail -1 $W/logs/ae-gpu.csv; tail -1 $W/logs/ae-cpu.csv
psnr() { grep -o 'psnr_db=[0-9.]*' "$1" | cut -d= -f2; }
pg_db=$(psnr $W/logs/ae-gpu.out); pc_db=$(psnr $W/logs/ae-cpu.out)
ips() { tail -1 "$1" | cut -d, -f6; }
gi=$(ips $W/logs/ae-gpu.csv 2>/dev/null); ci=$(ips $W/logs/ae-cpu.csv 2>/dev/null)
echo "stage 1: gpu ${pg_db:-fail} dB ${gi:-?} img/s; cpu ${pc_db:-fail} dB ${ci:-?} img/s"
best=cpu
if [ -n "$pg_db" ] && { [ -z "$pc_db" ] || awk "BEGIN{exit !($pg_db >= $pc_db)}"; }; then best=gpu; fi
cp $W/$best/ae.st $W/ae.st; echo "autoencoder from $best"
dev=cpu
if [ $rg = 0 ] && [ -n "$gi" ] && awk "BEGIN{exit !(${gi:-0} > ${ci:-0})}"; then dev=gpu; fi
fi
echo "== B: stage 2 on $dev, ${B_SECS}s each ($(el)s)"
# A GPU step here costs about the same at batch 128 or 512 (per-op overhead dominates), so
# GPU runs take big batches; BATCH, LR and WARMUP override.
BATCH=${BATCH:-128}
if [ $dev = cpu ]; then export LDM_TRAIN_DEVICE=cpu RAYON_NUM_THREADS=5; BATCH=32; fi
S2="train ldm $D --tokenizer $TOK --autoencoder $W/ae.st --steps 200000 --decay-start 120000 --batch $BATCH --lr ${LR:-1e-3} --warmup ${WARMUP:-200} --ema-decay 0.999 --cond-dropout 0.1 --seed 0 --ckpt-every 250 --quiet --max-seconds $B_SECS"
# txt2img gets the wider preset (attribute binding); sr and inpaint lean on their image input.
for t in txt2img sr inpaint; do
  p=shapes; [ $t = txt2img ] && p=shapes-m
  $H $S2 --preset $p --task $t -o $W/$t.st --log $W/logs/$t.csv > $W/logs/$t.out 2>&1 &
  eval "p_$t=$!"
done
# Curve snapshots of txt2img: export the latest checkpoint three times during the run and
# evaluate each on 60 held-out prompts with the (otherwise idle) CPU cores, in the background.
( for k in 1 2 3; do sleep $(( B_SECS / 5 )); [ -f $W/txt2img.st ] || continue
    s=$(tail -n 1 $W/logs/txt2img.csv | cut -d, -f1)
    $H export $W/txt2img.st --dtype q8 -o $W/curve/t2i-step$s.ldm >/dev/null 2>&1 || continue
    echo "curve snapshot at step $s ($(el)s)"
    LDM_TRAIN_DEVICE=cpu timeout 150 $H eval --model $W/curve/t2i-step$s.ldm --prompts 60 \
      --psnr-images 0 --json > $W/logs/curve-step$s.json 2> $W/logs/curve-step$s.err &
  done; wait ) &
pcurve=$!
wait $p_txt2img; echo "txt2img rc=$?"; wait $p_sr; echo "sr rc=$?"; wait $p_inpaint; echo "inpaint rc=$?"
# The last snapshot's evaluation may still run; it has its own timeout.
wait $pcurve
echo "== C: export ($(el)s)"
for t in txt2img sr inpaint; do
  tail -n 1 $W/logs/$t.csv; tail -n 2 $W/logs/$t.out
  $H export $W/$t.st --dtype q8 -o $OUT/$t-q8.ldm
done
cp $W/ae.st $OUT/ae.safetensors
ls $W/curve
# Snapshots stay there (11 MB each; their evaluations come back in the logs).
tar cJf $OUT/logs.tar.xz -C $W logs
ls -la $OUT; echo "total $(el)s"
