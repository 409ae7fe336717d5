"""Run one command and record its wall time, CPU time and peak memory.

    python benchmarks/measure.py --json m.json [--timeout S] [--log run.log] -- CMD ARGS...

Started fresh for every measurement, so ``getrusage(RUSAGE_CHILDREN)`` covers exactly the one
child (``ru_maxrss``: the kernel's peak resident set size of that process, file-backed pages of
memory-mapped data included). Also samples ``/proc/<pid>/status`` every 20 ms for the peak of
``RssAnon`` (heap, tensors: memory that the process really allocates, without the page cache of a
memory-mapped input file). Also records how many cores other processes kept busy meanwhile
(from /proc/stat), since the wall time on a 2-core machine shared with other jobs is only as
good as the machine was idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (first line of /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--log", default=None, help="child's stdout and stderr (default: inherit)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        ap.error("no command given")

    load_before = _loadavg()
    busy_before = _busy_s()
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    log = open(args.log, "w") if args.log else None  # noqa: SIM115
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    timed_out = False
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None)
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                pass
            for k, v in _status_kb(proc.pid).items():
                peak[k] = max(peak[k], v)
            if args.timeout is not None and time.perf_counter() - t0 > args.timeout:
                timed_out = True
                proc.kill()
                rc = proc.wait()
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if log is not None:
            log.close()
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after = _busy_s()
    me = resource.getrusage(resource.RUSAGE_SELF)
    own = (me.ru_utime + me.ru_stime) - (self_before.ru_utime + self_before.ru_stime)
    other_cores = None
    if busy_before is not None and busy_after is not None and wall > 0:
        others = busy_after - busy_before - (ru.ru_utime + ru.ru_stime) - own
        other_cores = max(others, 0.0) / wall
    result = {
        "cmd": cmd,
        "rc": rc,
        "timed_out": timed_out,
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "maxrss_mb": ru.ru_maxrss / 1024,  # Linux: kilobytes
        "peak_anon_mb_sampled": peak["RssAnon"] / 1024,
        "peak_file_mb_sampled": peak["RssFile"] / 1024,
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        # Average number of cores that OTHER processes kept busy while this one ran.
        "other_cores_busy": other_cores,
    }
    tmp = f"{args.json}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.json)
    sys.exit(0)


if __name__ == "__main__":
    main()
