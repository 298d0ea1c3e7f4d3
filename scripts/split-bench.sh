#!/usr/bin/env bash
# Long audio in parallel, measured: one API node (`serve --workers 0`) and a shared redis-server,
# then N worker processes each pinned to its own core with `taskset`, for
#   1 worker, splitting off | 1 worker, splitting on | 2 workers, splitting on
# Every run posts fresh audio (a different gain each time, so no cache entry of an earlier run
# helps) for a ready avatar and times POST -> status ready from the client. Prints medians and
# the 2-vs-1 ratio. Usage: scripts/split-bench.sh [seconds of audio (60)] [runs per case (3)]
# Needs a release build (cargo build --release) and the shared test data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=env.sh
source scripts/env.sh
seconds="${1:-60}"
runs="${2:-3}"
bin="${VIPAVATAR_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/vipavatar}"
data="${VIPAVATAR_TESTDATA:-$root/../shared/testdata}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores" >&2; exit 1; }
work="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
rport=$((port + 1))
pids=()
cleanup() {
  for p in "${pids[@]}" $(cat "$work/workers.pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$rport" --save "" --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
export REDIS_URL="redis://127.0.0.1:$rport" VIPAVATAR_NAMESPACE=splitbench VIPAVATAR_DATA_DIR="$work/data"
export VIPAVATAR_ENGINE=classic VIPAVATAR_DEVICE=cpu RUST_LOG=warn
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
VIPAVATAR_BIND="127.0.0.1:$port" "$bin" serve --workers 0 >"$work/api.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done

ffmpeg -nostdin -v error -stream_loop 40 -i "$data/audio/bus_chinese.wav" -t "$seconds" -ar 16000 -ac 1 "$work/base.wav"

# Start the workers of one case; echo their pids.
start_workers() {
  local n="$1" split="$2" cpu
  for cpu in $(seq 0 $((n - 1))); do
    VIPAVATAR_SPLIT_SECONDS="$split" taskset -c "$cpu" "$bin" worker --workers 1 >>"$work/worker-$cpu.log" 2>&1 &
    echo $! | tee -a "$work/workers.pids"
  done
}

mkfifo "$work/go"
python3 - "$port" "$work" "$runs" "$data/images/people_0.png" <<'PY' &
import json, subprocess, sys, time, urllib.request, uuid
port, work, runs, image = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
base = f"http://127.0.0.1:{port}"

def multipart(fields, files):
    b = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
    for k, (name, data) in files.items():
        out += f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{name}\"\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"

def post(path, fields, files):
    body, ctype = multipart(fields, files)
    req = urllib.request.Request(base + path, data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)

def get(path):
    with urllib.request.urlopen(base + path) as r:
        return json.load(r)

def wait_for(fifo):
    # The shell writes the case name into the fifo once its workers are up.
    with open(fifo) as f:
        return f.readline().strip()

results = {}
n = 0
image_id = None
while True:
    case = wait_for(f"{work}/go")
    if case == "done":
        break
    if image_id is None:
        r = post("/api/avatar/upload", {}, {"image_file": ("p.png", open(image, "rb").read())})
        image_id = r["image_id"]
        while get(f"/api/avatar/status/{image_id}")["status"] != "ready":
            time.sleep(0.1)
    times = []
    for _ in range(runs + 1):
        n += 1
        wav = f"{work}/run{n}.wav"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", f"{work}/base.wav", "-af", f"volume={1 - n * 0.003:.3f}", wav], check=True)
        t0 = time.time()
        r = post("/api/vip/generate", {"image_id": image_id}, {"audio_file": ("a.wav", open(wav, "rb").read())})
        if "session_id" not in r:
            sys.exit(f"generate answered {r}")
        sid = r["session_id"]
        while True:
            s = get(f"/api/vip/status/{sid}")
            if s["status"] in ("ready", "failed"):
                break
            time.sleep(0.02)
        total = time.time() - t0
        assert s["status"] == "ready", s
        st = s["performance"]["stages"]
        parts = sorted(f"{k}={st[k] * 1e3:.0f}" for k in st if k.startswith("part") or k in ("mux_finish", "generate"))
        times.append(total)
        print(f"{case:28s} {total * 1e3:8.0f} ms  first frame {s.get('first_frame_ms')} ms  frames {s['frames_total']}  {' '.join(parts) or 'unsplit'}", flush=True)
    times = sorted(times[1:])  # the first run warms the workers up
    results[case] = times[len(times) // 2]
    with open(f"{work}/ack", "w") as f:
        f.write("ok\n")
print()
for case, t in results.items():
    print(f"median {case:28s} {t * 1e3:8.0f} ms")
one = results.get("1 worker, split on")
two = results.get("2 workers, split on")
if one and two:
    print(f"2 workers vs 1 (split on): {one / two:.2f}x faster")
off = results.get("1 worker, split off")
if off and two:
    print(f"2 workers vs 1 (split off): {off / two:.2f}x faster")
PY
client=$!
run_case() {
  local name="$1" n="$2" split="$3" w
  mapfile -t w < <(start_workers "$n" "$split")
  # Until every worker advertises itself (models loaded).
  for _ in $(seq 300); do
    [ "$(redis-cli -p "$rport" --scan --pattern 'splitbench:worker:*' | wc -l)" -ge "$n" ] && break
    sleep 0.1
  done
  rm -f "$work/ack"
  echo "$name" >"$work/go"
  while [ ! -f "$work/ack" ]; do
    kill -0 "$client" 2>/dev/null || { echo "the client stopped" >&2; exit 1; }
    sleep 0.2
  done
  kill "${w[@]}"
  wait "${w[@]}" 2>/dev/null || true
  # A killed worker's advertisement outlives it by its TTL: drop it, so the next case counts
  # only its own workers.
  redis-cli -p "$rport" --scan --pattern 'splitbench:worker:*' | xargs -r redis-cli -p "$rport" del >/dev/null
}
run_case "1 worker, split off" 1 0
run_case "1 worker, split on" 1 30
run_case "2 workers, split on" 2 30
echo done >"$work/go"
wait "$client"
