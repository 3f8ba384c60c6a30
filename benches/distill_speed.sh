#!/bin/bash
# Teacher vs distilled students, wall time per image on the CPU (issue #12): benches/distill_speed.sh
# Alternating rounds: teacher (20 steps CFG), 4-step and 2-step students; plans prepared per request and kept.
cd "$(dirname "$0")/.."
for r in 1 2 3; do
  for spec in "models/shapes-32.ldm|" "models/shapes-32-lcm.ldm|" "models/shapes-32-lcm.ldm|--steps 2"; do
    m=${spec%%|*}; extra=${spec#*|}
    ./target/release/ldm bench --generate -m $m --backend cpu --iters 20 --json $extra 2>/dev/null | python3 -c "import json,sys;d=json.load(sys.stdin);print('r$r', d['model'].split('/')[-1], d['steps'], 'fresh', round(d['ms_per_image'],1), 'kept', round(d['ms_per_image_reused'],1))"
  done
done
