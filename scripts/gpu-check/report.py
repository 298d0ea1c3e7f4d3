"""Turn the GPU check's logs (parity.log, timing.log, memory.csv in OUT) into gpu-check.json."""
import json
import os
import re
import sys

out, seconds, bundle = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def read(name):
    path = os.path.join(out, name)
    return open(path, errors="replace").read().splitlines() if os.path.exists(path) else []


def tests(lines):
    """libtest's summary (with --nocapture a test's status may land on another line than its name):
    counts from every `test result:` line and the names listed under `failures:`."""
    result = {"passed": 0, "failed": 0, "ignored": 0, "failures": []}
    listing = False
    for line in lines:
        m = re.search(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
        if m:
            for key, value in zip(("passed", "failed", "ignored"), m.groups()):
                result[key] += int(value)
            listing = False
        elif line.strip() == "failures:":
            listing = True
        elif listing and re.match(r"    \S+::\S+$", line):
            result["failures"].append(line.strip())
    return result


# Report lines the tests print: parity errors, frames/s, fp16 error, shared sessions.
KEEP = re.compile(r"max abs|frames/s|faces/s|s per frame|fp16|shared sessions|stand-in timing|skipped|exit ")
memory = []
name = None
for row in read("memory.csv"):
    parts = [p.strip() for p in row.split(",")]
    if len(parts) == 2 and parts[1].isdigit():
        name, used = parts[0], int(parts[1])
        memory.append(used)
parity, timing = read("parity.log"), read("timing.log")
report = {
    "bundle": open(bundle).read().splitlines() if os.path.exists(bundle) else [],
    "device": os.environ.get("VIPAVATAR_DEVICE", "cuda"),
    "gpu": name,
    "seconds": seconds,
    "parity_tests": tests(parity),
    "timing_tests": tests(timing),
    "parity_lines": [l for l in parity if KEEP.search(l)],
    "timing_lines": [l for l in timing if KEEP.search(l)],
    "peak_gpu_memory_mib": max(memory) if memory else None,
}
report["failed"] = report["parity_tests"]["failures"] + report["timing_tests"]["failures"]
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(report, f, indent=1)
print(json.dumps({k: report[k] for k in ("gpu", "seconds", "failed", "peak_gpu_memory_mib")}))
for line in report["parity_lines"] + report["timing_lines"]:
    print(line)
