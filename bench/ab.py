#!/usr/bin/env python3
"""A/B of two allocator libraries on a one-thread alloc_bench cell, the two run side by side.

Each round starts A pinned to one CPU and B pinned to another at the same moment, so both run
through the same phase of a shared host: on the development VM the same binary runs pairs16 at
104M or 178M pairs/s from one minute to the next, and runs taken one after the other gave
single-round ratios from 0.6 to 1.7. The next round swaps the CPUs, since two virtual CPUs need
not be equally fast (here one ran the same binary 5% faster than the other, and within the hour
30-60% faster), and each pair of rounds is summarized by the geometric mean of its two ratios,
which cancels that bias while it holds for the pair. With the same library on both sides, ten
rounds each (2026-12-07): medians of the pair figures 1.030 (pairs16), 1.004 (batch) and 0.971
(pairs64), single pairs 0.88-1.08. So a median within about 3% of 1 is no difference.

Both runs share the last-level cache and memory bandwidth, so this measures a one-thread cell
of a program sharing the machine with one other: good for "did this change help", not a
replacement for scripts/bench.sh's table.

    python3 bench/ab.py [--build DIR] [--rounds N] [--scale S] WORKLOAD LIB_A LIB_B

LIB: a shared library to preload, or glibc, jemalloc, mimalloc, tcmalloc (Debian's packages).
Prints B/A per round, the median of the per-pair geometric means and their range.
"""
import argparse
import math
import os
import re
import statistics
import subprocess
import sys

LIBDIR = "/usr/lib/x86_64-linux-gnu"
NAMED = {
    "glibc": "",
    "jemalloc": f"{LIBDIR}/libjemalloc.so.2",
    "mimalloc": f"{LIBDIR}/libmimalloc.so.2",
    "tcmalloc": f"{LIBDIR}/libtcmalloc_minimal.so.4",
}


def preload_of(lib):
    if lib in NAMED:
        return NAMED[lib]
    if not os.path.isfile(lib):
        sys.exit(f"ab.py: {lib}: no such library (a path, or one of {', '.join(NAMED)})")
    return os.path.abspath(lib)


def start(bench, workload, scale, cpu, preload):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    cmd = ["taskset", "-c", str(cpu), bench, "--workload", workload, "--threads", "1", "--scale", str(scale)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ops_per_sec(proc, name):
    out, _ = proc.communicate()
    m = re.search(r"ops_per_sec=([0-9.]+)", out)
    if proc.returncode != 0 or m is None:
        sys.exit(f"ab.py: the run under {name} failed (exit {proc.returncode}):\n{out}")
    return float(m.group(1))


def main(argv):
    p = argparse.ArgumentParser(prog="ab.py", description=__doc__.split("\n")[0])
    p.add_argument("--build", default="build", help="the build directory (default build)")
    p.add_argument("--rounds", type=int, default=10, help="rounds, rounded up to even (default 10)")
    p.add_argument("--scale", type=float, default=1.0, help="work per run (alloc_bench --scale)")
    p.add_argument("workload")
    p.add_argument("lib_a")
    p.add_argument("lib_b")
    a = p.parse_args(argv)
    bench = os.path.join(a.build, "bench", "alloc_bench")
    if not os.access(bench, os.X_OK):
        sys.exit(f"ab.py: {bench} not found: build first (cmake --build {a.build})")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("ab.py: needs two CPUs to run the two libraries side by side")
    first, second = cpus[0], cpus[1]
    preload_a, preload_b = preload_of(a.lib_a), preload_of(a.lib_b)
    rounds = a.rounds + a.rounds % 2
    ratios = []
    for r in range(rounds):
        cpu_a, cpu_b = (first, second) if r % 2 == 0 else (second, first)
        proc_a = start(bench, a.workload, a.scale, cpu_a, preload_a)
        proc_b = start(bench, a.workload, a.scale, cpu_b, preload_b)
        ops_a, ops_b = ops_per_sec(proc_a, a.lib_a), ops_per_sec(proc_b, a.lib_b)
        ratios.append(ops_b / ops_a)
        print(f"round {r + 1}: A on CPU {cpu_a} {ops_a / 1e6:.2f}M ops/s, B on CPU {cpu_b} "
              f"{ops_b / 1e6:.2f}M ops/s, B/A {ops_b / ops_a:.3f}", flush=True)
    pairs = [math.sqrt(ratios[i] * ratios[i + 1]) for i in range(0, rounds, 2)]
    print(f"workload={a.workload} rounds={rounds} b_over_a_median={statistics.median(pairs):.3f} "
          f"b_over_a_min={min(pairs):.3f} b_over_a_max={max(pairs):.3f} "
          f"(geometric means of {len(pairs)} CPU-swapped pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
