#!/usr/bin/env python3
"""Issue 14 probe (the bad-input and outage cases over raw sockets) against a vipavatar binary.

Usage: python3 scripts/probe_issue14.py BIN PORT   (BIN: a built `vipavatar`; PORT: a free port)
Starts `serve` with a private Redis in temporary data dirs, prints one JSON report, and leaves
no process behind. Used for the before/after numbers of the hardening work.
"""
import json, os, signal, socket, subprocess, sys, tempfile, time, struct, zlib

BIN, PORT = sys.argv[1], int(sys.argv[2])
H = "127.0.0.1"
CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")


def start(data, port=PORT, workers="0"):
    env = dict(os.environ, VIPAVATAR_DATA_DIR=data, VIPAVATAR_ENGINE="classic", RUST_LOG="info",
               VIPAVATAR_CHECKPOINTS=CHECKPOINTS, VIPAVATAR_BODY_TIMEOUT_SECS="2")
    env.pop("REDIS_URL", None)
    log = open(os.path.join(data, "serve.log"), "ab")
    p = subprocess.Popen([BIN, "serve", "--workers", workers, "--bind", f"{H}:{port}"], env=env, stdout=log, stderr=log)
    for _ in range(300):
        try:
            if raw(f"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=1)[0] == 200:
                return p
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not start")


def raw(req, body=b"", timeout=10.0, port=PORT, keep=False):
    s = socket.create_connection((H, port), timeout=timeout)
    s.sendall(req.encode() + body)
    data = b""
    t0 = time.time()
    try:
        while b"\r\n\r\n" not in data:
            c = s.recv(65536)
            if not c:
                break
            data += c
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0] else None
        hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            c = s.recv(65536)
            if not c:
                break
            rest += c
    except socket.timeout:
        status, hdrs, rest = None, {}, b""
    took = time.time() - t0
    if keep:
        return status, hdrs, rest, took, s
    s.close()
    return status, hdrs, rest, took


def png(w, h):
    rows = b"".join(b"\x00" + b"\x80" * w for _ in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def form(name, filename, ctype, data):
    b = b"--XB\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\nContent-Type: %s\r\n\r\n" % (name.encode(), filename.encode(), ctype.encode())
    return b + data + b"\r\n--XB--\r\n"


def close_wait():
    out = subprocess.run(["ss", "-tanH", "state", "close-wait", f"( sport = :{PORT} )"], capture_output=True, text=True).stdout
    return len([l for l in out.splitlines() if l.strip()])


def redis_pid(data):
    try:
        return int(open(os.path.join(data, "redis/redis-server.pid")).read())
    except Exception:
        out = subprocess.run(["pgrep", "-f", f"redis-server.*{data}"], capture_output=True, text=True).stdout.split()
        out += subprocess.run(["pgrep", "-P", str(SERVE.pid), "redis-server"], capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None


def alive(pid):
    try:
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return st not in ("Z", "X")
    except Exception:
        return False


res = {}
data = tempfile.mkdtemp(prefix="probe-")
SERVE = start(data)
mp = "multipart/form-data; boundary=XB"
part = b"--XB\r\nContent-Disposition: form-data; name=\"preprocess_mode\"\r\n\r\ncrop"

# 1. truncated closing boundary x200, client closes after 1 s
answered = 0
for i in range(200):
    tail = [b"\r\n-", b"\r\n---", b"\r\n", b"\r\n--X"][i % 4]
    body = part + tail
    st, _, _, took = raw(f"POST /api/avatar/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {mp}\r\nContent-Length: {len(body)}\r\n\r\n", body, timeout=0.5 if i else 3)
    answered += st is not None
time.sleep(1)
res["truncated_boundary"] = {"answered": f"{answered}/200", "close_wait_after": close_wait()}

# 2. boundary=a with --\n, and empty boundary=
out = []
for ct, body in [("multipart/form-data; boundary=a", b"--\n"), ("multipart/form-data; boundary=", b"--\r\n\r\n")]:
    st, _, b, _ = raw(f"POST /api/avatar/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n", body, timeout=5)
    out.append((ct, st, b[:80].decode("latin1")))
panics = open(os.path.join(data, "serve.log"), "rb").read().count(b"panicked")
res["boundary_panic"] = {"answers": out, "panics_in_log": panics}

# 3. slow body: declares 200000, sends 1000
body = b"--XB\r\nContent-Disposition: form-data; name=\"image_file\"; filename=\"a.png\"\r\n\r\n" + b"x" * 900
st, hdrs, b, took = raw(f"POST /api/avatar/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {mp}\r\nContent-Length: 200000\r\n\r\n", body, timeout=20)
res["slow_body"] = {"status": st, "seconds": round(took, 2), "body": b[:80].decode("latin1")}

# 4. wrong method
st, hdrs, b, _ = raw("GET /api/vip/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
st2, hdrs2, _, _ = raw("TRACE /api/cache/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
res["wrong_method"] = {"GET generate": (st, hdrs.get("allow"), b[:60].decode()), "TRACE stats": (st2, hdrs2.get("allow"))}

# 5. tiny images
out = {}
for w, h in [(1, 1), (100000, 1)]:
    body = form("image_file", "a.png", "image/png", png(w, h))
    st, _, b, _ = raw(f"POST /api/avatar/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {mp}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n", body)
    out[f"{w}x{h}"] = (st, b[:70].decode())
res["tiny_images"] = out

# 6. Redis hangs (SIGSTOP): time of status, stats, upload
rp = redis_pid(data)
os.kill(rp, signal.SIGSTOP)
out = {}
img = form("image_file", "a.png", "image/png", png(300, 300))
for name, req, body in [
    ("stats", "GET /api/cache/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b""),
    ("status", "GET /api/avatar/status/" + "a" * 64 + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b""),
    ("upload", f"POST /api/avatar/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {mp}\r\nContent-Length: {len(img)}\r\nConnection: close\r\n\r\n", img),
    ("stats again", "GET /api/cache/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b""),
]:
    st, hdrs, b, took = raw(req, body, timeout=15)
    out[name] = (st, round(took, 2), hdrs.get("retry-after"), b[:40].decode("latin1"))
res["redis_hung"] = out

# 7. SIGTERM during the outage
t0 = time.time()
SERVE.send_signal(signal.SIGTERM)
try:
    rc = SERVE.wait(timeout=30)
except subprocess.TimeoutExpired:
    SERVE.kill()
    rc = "killed after 30 s"
try:
    os.kill(rp, signal.SIGCONT)
except ProcessLookupError:
    pass
log = open(os.path.join(data, "serve.log"), "rb").read()
res["sigterm_in_outage"] = {"exit": rc, "seconds": round(time.time() - t0, 2), "panics_in_log": log.count(b"panicked") - panics, "redis_child_alive_after": alive(rp)}
if alive(rp):
    os.kill(rp, signal.SIGKILL)
time.sleep(0.5)

# 8. kill -9 of the Redis child: recovery
data2 = tempfile.mkdtemp(prefix="probe-")
SERVE = start(data2)
rp = redis_pid(data2)
os.kill(rp, signal.SIGKILL)
t0 = time.time()
rec = None
while time.time() - t0 < 15:
    st, _, _, _ = raw("GET /api/cache/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)
    if st == 200:
        rec = round(time.time() - t0, 2)
        break
    time.sleep(0.2)
res["redis_killed"] = {"stats_200_again_after_s": rec, "old_child_zombie_or_alive": os.path.exists(f"/proc/{rp}")}

# 9. a second serve on the same dir
env = dict(os.environ, VIPAVATAR_DATA_DIR=data2, VIPAVATAR_CHECKPOINTS=CHECKPOINTS)
env.pop("REDIS_URL", None)
sock_before = os.stat(os.path.join(data2, "redis/redis.sock")).st_ino
t0 = time.time()
try:
    p2 = subprocess.run([BIN, "serve", "--workers", "0", "--bind", f"{H}:{PORT}"], env=env, capture_output=True, timeout=20)
    second = (p2.returncode, p2.stderr.decode()[-160:].strip())
except subprocess.TimeoutExpired:
    second = ("still running after 20 s",)
sock_after = os.stat(os.path.join(data2, "redis/redis.sock")).st_ino if os.path.exists(os.path.join(data2, "redis/redis.sock")) else None
st, _, _, _ = raw("GET /api/cache/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5)
res["second_serve"] = {"result": second, "seconds": round(time.time() - t0, 2), "socket_replaced": sock_before != sock_after, "first_still_serves": st}

# 10. kill -9 of the service: does its Redis survive?
rp = redis_pid(data2)
SERVE.kill()
SERVE.wait()
time.sleep(3)
res["kill9_service"] = {"redis_child_alive_3s_later": alive(rp)}
if alive(rp):
    os.kill(rp, signal.SIGKILL)

print(json.dumps(res, indent=1))
