#!/usr/bin/env bash
# Runs on the GPU host from the bundle folder (see scripts/gpu-check.sh): the SadTalker and GFPGAN
# network parity tests on $VIPAVATAR_DEVICE (default cuda) against the fixture tolerances, the
# stand-in one-shot and VIP cases, then the renderer timings (frames/s per batch size at 256 and
# 512 px against the per-frame reference loop, the float16 generator's error, N sessions sharing
# passes against one) and the GFPGAN network's faces/s per batch size and float16 error,
# sampling GPU memory;
# writes $OUT/gpu-check.json. Needs only the host's torch: TORCH_LIB (default: the torch of
# /opt/torch/.venv) goes on LD_LIBRARY_PATH.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
lib=${TORCH_LIB:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1)}
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export VIPAVATAR_SADTALKER_FIXTURES="$here/fixtures" VIPAVATAR_GFPGAN_FIXTURES="$here/fixtures-gfpgan"
export VIPAVATAR_DEVICE=${VIPAVATAR_DEVICE:-cuda} CI=true
python=$(command -v python3 || echo /opt/torch/.venv/bin/python)

sampler=
if [ "${VIPAVATAR_DEVICE}" != cpu ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.used --format=csv,noheader,nounits -lms 250 >"$out/memory.csv" 2>/dev/null &
  sampler=$!
fi
start=$(date +%s)
# 1. Parity: every SadTalker network test the bundle has fixtures for (not the 3DMM recon net's
#    weights, 46 MB: its parity test and the two loader tests that read that file are skipped).
"$here/check" sadtalker --skip sadtalker_recon --skip sadtalker_loader_ --test-threads=1 --nocapture \
  >"$out/parity.log" 2>&1
echo "parity exit $?" >>"$out/parity.log"
#    GFPGAN: the network, one full-width layer, the loader, noise, the official layout.
"$here/check" gfpgan --test-threads=1 --nocapture >>"$out/parity.log" 2>&1
echo "gfpgan parity exit $?" >>"$out/parity.log"
# 2. Timings (ignored tests, full-size seeded random weights).
if [ "${VIPAVATAR_DEVICE}" = cpu ]; then frames=2 batches=1,2 sizes=256 sessions=2 seconds=0.2 faces=1 repeats=1; else
  frames=32 batches=1,2,4,8,16,32 sizes="256 512" sessions=4 seconds=8 faces=1,2,4,8,16 repeats=5; fi
# The engine's one-shot and VIP cases on stand-in checkpoints (tensor level: no detection, no video).
VIPAVATAR_BENCH_SECONDS=$seconds "$here/check" sadtalker_standin_timing --ignored --test-threads=1 --nocapture \
  >>"$out/timing.log" 2>&1
for size in $sizes; do
  VIPAVATAR_BENCH_FRAMES=$frames VIPAVATAR_BENCH_BATCHES=$batches VIPAVATAR_BENCH_SIZE=$size \
    "$here/check" sadtalker_facerender_batch_sizes --ignored --test-threads=1 --nocapture >>"$out/timing.log" 2>&1
done
VIPAVATAR_BENCH_FRAMES=$frames VIPAVATAR_BENCH_SESSIONS=$sessions "$here/check" sadtalker_facerender_fp16_error \
  sadtalker_facerender_shared_sessions sadtalker_facerender_speed_vs_reference_loop --ignored --test-threads=1 \
  --nocapture >>"$out/timing.log" 2>&1
echo "timing exit $?" >>"$out/timing.log"
GFPGAN_TIMING_BATCHES=$faces GFPGAN_TIMING_REPEATS=$repeats "$here/check" gfpgan_network_timing --ignored \
  --test-threads=1 --nocapture >>"$out/timing.log" 2>&1
echo "gfpgan timing exit $?" >>"$out/timing.log"
[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
"$python" "$here/report.py" "$out" "$(($(date +%s) - start))" "$here/BUNDLE.txt"
