#!/usr/bin/env python3
"""Runs every benchmark workload under each allocator and reports how they compare.

Allocators are interleaved round by round (each round in a rotated order) and every cell is the
median of its repetitions, so a machine that drifts during the run favours no allocator. Writes
results.md, results.csv and PNG plots (gnuplot) into the output directory. Called by
scripts/bench.sh, which installs and builds what this needs.
"""
import argparse
import csv
import datetime
import os
import shlex
import statistics
import subprocess
import sys

LIBDIR = "/usr/lib/x86_64-linux-gnu"
BASELINES = {
    "glibc": None,
    "jemalloc": f"{LIBDIR}/libjemalloc.so.2",
    "mimalloc": f"{LIBDIR}/libmimalloc.so.2",
    "tcmalloc": f"{LIBDIR}/libtcmalloc_minimal.so.4",
}
# fastmalloc-harden is fastmalloc with FASTMALLOC_HARDEN=1: the price of its checks. Neither
# fastmalloc variant counts as the other's competitor in the "/best other" columns.
ORDER = ["glibc", "jemalloc", "mimalloc", "tcmalloc", "fastmalloc", "fastmalloc-harden"]
COLORS = {"glibc": "#555555", "jemalloc": "#1f77b4", "mimalloc": "#2ca02c", "tcmalloc": "#ff7f0e",
          "fastmalloc": "#d62728", "fastmalloc-harden": "#9467bd"}
EXTRA_ENV = {"fastmalloc-harden": {"FASTMALLOC_HARDEN": "1"}}


def is_fastmalloc(allocator):
    return allocator.startswith("fastmalloc")


def competitors(allocator, names):
    return [k for k in names if k != allocator and not (is_fastmalloc(k) and is_fastmalloc(allocator))]
QUICK_SCALE = 0.03


def parse_args(argv, ncpu):
    p = argparse.ArgumentParser(
        prog="bench.sh",
        description="Compare fastmalloc with glibc, jemalloc, mimalloc and tcmalloc.")
    p.add_argument("--quick", action="store_true",
                   help="every workload once, small sizes, few thread counts (a smoke test)")
    p.add_argument("--allocators", help="comma-separated subset of: " + ",".join(ORDER))
    p.add_argument("--workloads", help="comma-separated subset of the workloads (alloc_bench --list)")
    p.add_argument("--threads", help="comma-separated thread counts (default: 1..CPUs, then 4x, 8x, 16x, 32x CPUs)")
    p.add_argument("--reps", type=int, help="repetitions per cell (default 3; 1 with --quick)")
    p.add_argument("--scale", type=float, help="work per run, relative to the default (default 1)")
    p.add_argument("--pin", action="store_true", help="pin threads to processing units (hwloc)")
    p.add_argument("--touch", choices=["ends", "all"], default="ends",
                   help="write the first and last byte of each block (default), or every byte")
    p.add_argument("--out", default="build/bench", help="output directory (default build/bench)")
    p.add_argument("--build", default="build", help="the build directory (default build)")
    p.add_argument("--no-sync", action="store_true",
                   help="skip sync_bench (RCU and prwlock read sides and writers)")
    a = p.parse_args(argv)

    def listing(text, allowed, what):
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            p.error(f"unknown {what}: {','.join(bad) or '(empty)'}; choose from {','.join(allowed)}")
        return items

    a.allocators = listing(a.allocators, ORDER, "allocator") if a.allocators else ORDER
    workloads = subprocess.run([os.path.join(a.build, "bench", "alloc_bench"), "--list"],
                               check=True, capture_output=True, text=True).stdout
    names = [line.split("\t")[0] for line in workloads.splitlines()]
    a.descriptions = dict(line.split("\t", 1) for line in workloads.splitlines())
    a.workloads = listing(a.workloads, names, "workload") if a.workloads else names
    if a.threads:
        try:
            a.threads = [int(x) for x in a.threads.split(",")]
        except ValueError:
            p.error(f"--threads takes whole numbers: {a.threads}")
        if any(t < 1 for t in a.threads):
            p.error("--threads: each count must be at least 1")
    elif a.quick:
        a.threads = sorted({1, ncpu, 4 * ncpu})
    else:
        a.threads = list(range(1, ncpu + 1)) + [4 * ncpu, 8 * ncpu, 16 * ncpu, 32 * ncpu]
    if a.reps is None:
        a.reps = 1 if a.quick else 3
    if a.reps < 1:
        p.error("--reps must be at least 1")
    if a.scale is None:
        a.scale = QUICK_SCALE if a.quick else 1.0
    if a.scale <= 0:
        p.error("--scale must be positive")
    return a


def run_one(args, allocator, workload, threads, cpu):
    """One run of alloc_bench. A one-thread run is held to `cpu` (unless --pin): the vCPUs of a
    shared host can differ in speed for minutes at a time (on the development machine, one ran
    workingset at 38M ops/s and the other at 65M, for every allocator alike), so an unpinned
    one-thread cell measured where its thread happened to land rather than the allocator."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    lib = (os.path.abspath(os.path.join(args.build, "libfastmalloc.so"))
           if is_fastmalloc(allocator) else BASELINES[allocator])
    if lib:
        env["LD_PRELOAD"] = lib
    env.update(EXTRA_ENV.get(allocator, {}))
    cmd = [os.path.join(args.build, "bench", "alloc_bench"), "--workload", workload,
           "--threads", str(threads), "--scale", str(args.scale)]
    if args.pin:
        cmd.append("--pin")
    if args.touch != "ends":
        cmd += ["--touch", args.touch]
    hold = (lambda: os.sched_setaffinity(0, {cpu})) if threads == 1 and not args.pin else None
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, preexec_fn=hold)
    if proc.returncode != 0:
        raise RuntimeError(f"{allocator} {workload} t={threads} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-300:]}")
    line = proc.stdout.strip().splitlines()[-1]
    return dict(kv.split("=", 1) for kv in line.split())


def main():
    ncpu = os.cpu_count() or 1
    args = parse_args(sys.argv[1:], ncpu)
    for name in args.allocators:
        lib = BASELINES.get(name)
        if lib and not os.path.exists(lib):
            sys.exit(f"bench: {name} is not installed ({lib})")
    os.makedirs(args.out, exist_ok=True)
    topology = subprocess.run([os.path.join(args.build, "bench", "alloc_bench"), "--topology"],
                              check=True, capture_output=True, text=True).stdout.strip()
    command = "bash scripts/bench.sh " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    print(f"machine: {topology}")
    print(f"command: {command}")

    cells = [(w, t) for w in args.workloads for t in (args.threads if w != "idle256" else [1])]
    total = len(cells) * len(args.allocators) * args.reps
    samples = {}  # (allocator, workload, threads) -> list of result dicts
    done = 0
    failures = []
    usable_cpus = sorted(os.sched_getaffinity(0))
    for rep in range(args.reps):
        # The same CPU for every allocator within a repetition, another in the next.
        one_thread_cpu = usable_cpus[rep % len(usable_cpus)]
        for i, (workload, threads) in enumerate(cells):
            shift = (rep + i) % len(args.allocators)
            for allocator in args.allocators[shift:] + args.allocators[:shift]:
                done += 1
                sys.stderr.write(f"\r[{done:4d}/{total}] rep {rep + 1} {workload:<11} threads={threads:<4} "
                                 f"{allocator:<10}")
                sys.stderr.flush()
                try:
                    samples.setdefault((allocator, workload, threads), []).append(
                        run_one(args, allocator, workload, threads, one_thread_cpu))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    failures.append(str(e))
    sys.stderr.write("\n")

    rows = []
    for (allocator, workload, threads), runs in samples.items():
        rows.append({
            "allocator": allocator, "workload": workload, "threads": threads,
            "ops_per_sec": statistics.median(float(r["ops_per_sec"]) for r in runs),
            "peak_rss_kb": statistics.median(int(r["peak_rss_kb"]) for r in runs),
            **{key: statistics.median(int(r[key]) for r in runs) if key in runs[0] else ""
               for key in ("idle_rss_kb", "filled_rss_kb", "churned_rss_kb", "live_peak_kb")},
            "reps": len(runs),
        })
    rows.sort(key=lambda r: (args.workloads.index(r["workload"]), r["threads"], ORDER.index(r["allocator"])))
    write_csv(args, rows)
    report = render(args, rows, topology, command)
    if not args.no_sync:
        report += run_sync_bench(args)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    print(report)
    plot(args, rows)
    if failures:
        print("FAILED runs:\n  " + "\n  ".join(failures))
        sys.exit(1)
    expected = len(cells) * len(args.allocators)
    if len(rows) != expected:
        sys.exit(f"bench: {len(rows)} of {expected} cells have results")
    print(f"bench: {len(rows)} cells, {done} runs; wrote {args.out}/results.md, results.csv and plots")


def run_sync_bench(args):
    """Runs sync_bench once; its read-side figures are its own medians of 5 interleaved runs."""
    scale = "0.05" if args.quick else "1"
    sys.stderr.write("sync_bench ...\n")
    proc = subprocess.run([os.path.join(args.build, "bench", "sync_bench"), "--scale", scale],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench: sync_bench failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    with open(os.path.join(args.out, "sync.txt"), "w") as f:
        f.write(proc.stdout)
    kv = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return render_sync(kv, scale)


def render_sync(kv, scale):
    out = ["## sync primitives: `build/bench/sync_bench`\n",
           f"Scale {scale} (raw output in sync.txt). ns per read-side critical section around "
           "one load, as CPU time (wall x min(threads, CPUs) / sections), median of 5 runs with the "
           "kinds interleaved; `/plain` is over the "
           "unsynchronized loop, as the median of the 5 runs' own ratios (each run's section over the "
           "plain loop of the same round, the kinds run back to back, so a change in the machine's speed between rounds cancels), "
           "`rwlock /` is pthread_rwlock's time over this one's "
           f"(readers fence: {kv.get('readers_fence', '?')}).\n"]
    kinds = ["plain", "padded", "rcu", "prwlock", "pthread_rwlock", "mutex"]
    for load, suffix in (("a 2^20-entry array", ""), ("one hot word", "_l1")):
        out.append(f"Load from {load}:\n")
        out.append("| threads | " + " | ".join(kinds) + " | padded /plain | rcu /plain | prwlock /plain | "
                   "prwlock /padded | rwlock / rcu | rwlock / prwlock |")
        out.append("|---" * (1 + len(kinds) + 6) + "|")
        for t in (1, 2, 16):
            v = {k: float(kv[f"{k}_read_ns{suffix}_t{t}"]) for k in kinds}
            over = {k: float(kv[f"{k}_over_plain{suffix}_t{t}"]) for k in ("padded", "rcu", "prwlock")}
            out.append(f"| {t} | " + " | ".join(f"{v[k]:.2f}" for k in kinds) +
                       f" | {over['padded']:.2f} | {over['rcu']:.2f}"
                       f" | {over['prwlock']:.2f} | {v['prwlock'] / v['padded']:.2f}"
                       f" | {v['pthread_rwlock'] / v['rcu']:.1f} | {v['pthread_rwlock'] / v['prwlock']:.1f} |")
        out.append("")
    out.append("`padded` is the unsynchronized section with as many nops as the prwlock's read side has "
               "instructions: where prwlock /padded is near 1, the read side costs what its length "
               "costs, whatever it synchronizes.\n")
    out.append("Writers, 16 reader threads running (µs): "
               f"prwlock write_lock+unlock p50 {kv['prwlock_write_us_p50']}, p99 {kv['prwlock_write_us_p99']}; "
               f"with synchronize() between (the span map's writer) p50 {kv['prwlock_unlink_us_p50']}, "
               f"p99 {kv['prwlock_unlink_us_p99']}; "
               f"synchronize_rcu p50 {kv['synchronize_rcu_us_p50']}, p99 {kv['synchronize_rcu_us_p99']}.\n")
    out.append("The design notes' table (2 threads, 75% get / 25% put on a 2^20-entry array), ns per operation:\n")
    out.append("| unsynchronized | compiler fence in put | mfence in put | mfence in put and get |")
    out.append("|---|---|---|---|")
    out.append(f"| {kv['table_plain_ns']} | {kv['table_compiler_fence_put_ns']} | {kv['table_mfence_put_ns']} "
               f"| {kv['table_mfence_put_get_ns']} |\n")
    return "\n".join(out) + "\n"


def write_csv(args, rows):
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["allocator", "workload", "threads", "ops_per_sec", "peak_rss_kb",
                                          "idle_rss_kb", "filled_rss_kb", "churned_rss_kb", "live_peak_kb",
                                          "reps"])
        w.writeheader()
        w.writerows(rows)


def fmt_rate(x):
    return f"{x / 1e6:.2f}M" if x >= 1e5 else f"{x / 1e3:.1f}k"


def render(args, rows, topology, command):
    by = {(r["allocator"], r["workload"], r["threads"]): r for r in rows}
    out = [f"# Allocator benchmark\n",
           f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
           f"- machine: {topology}",
           f"- command: `{command}`",
           f"- cells are medians of {args.reps} run(s); allocators interleaved round by round; scale {args.scale}; "
           f"touch {args.touch}; "
           + ("threads pinned (--pin)" if args.pin else
              "one-thread runs held to one CPU per repetition, the same for every allocator"),
           "",
           "Throughput is operations per second (M = millions), higher is better. `/glibc` is the",
           "allocator's throughput over glibc's; `/best other` is over the best of the other allocators",
           "in the run (above 1.00: this allocator is the fastest in that row).",
           ""]
    for workload in args.workloads:
        threads_list = sorted({r["threads"] for r in rows if r["workload"] == workload})
        out.append(f"## {workload}: {args.descriptions.get(workload, '')}\n")
        if workload == "idle256":
            out.append("| allocator | RSS of 256 idle threads (KiB) | /glibc |")
            out.append("|---|---|---|")
            base = by.get(("glibc", workload, 1))
            for a in args.allocators:
                r = by.get((a, workload, 1))
                if r:
                    ratio = f"{r['idle_rss_kb'] / base['idle_rss_kb']:.2f}" if base else "-"
                    out.append(f"| {a} | {r['idle_rss_kb']:.0f} | {ratio} |")
            out.append("")
            continue
        out.append("| threads | " + " | ".join(args.allocators) + " | " +
                   " | ".join(f"{a} /glibc | {a} /best other" for a in args.allocators if a != "glibc") + " |")
        out.append("|---" * (1 + len(args.allocators) + 2 * len([a for a in args.allocators if a != "glibc"])) + "|")
        for t in threads_list:
            cells = {a: by[(a, workload, t)]["ops_per_sec"] for a in args.allocators if (a, workload, t) in by}
            line = [str(t)] + [fmt_rate(cells[a]) if a in cells else "-" for a in args.allocators]
            for a in args.allocators:
                if a == "glibc":
                    continue
                g = cells.get("glibc")
                others = [cells[k] for k in competitors(a, cells)]
                line.append(f"{cells[a] / g:.2f}" if a in cells and g else "-")
                line.append(f"{cells[a] / max(others):.2f}" if a in cells and others else "-")
            out.append("| " + " | ".join(line) + " |")
        out.append("")
        out.append("Peak RSS (MiB): " + ", ".join(
            f"{a} {max(by[(a, workload, t)]['peak_rss_kb'] for t in threads_list if (a, workload, t) in by) / 1024:.1f}"
            for a in args.allocators if any((a, workload, t) in by for t in threads_list)))
        out.append("")
        if any(r["workload"] == workload and r["live_peak_kb"] != "" for r in rows):
            out.append("Pages the live blocks had touched at once, at most (MiB; no allocator's true peak is "
                       "below it, but VmHWM, which the kernel updates only when it lowers RSS, can be): " + ", ".join(
                f"{a} {max(by[(a, workload, t)]['live_peak_kb'] for t in threads_list if (a, workload, t) in by) / 1024:.1f}"
                for a in args.allocators if any((a, workload, t) in by for t in threads_list)))
            out.append("")
        if any(r["workload"] == workload and r["filled_rss_kb"] != "" for r in rows):
            out.extend(render_held_rss(args, by, workload, threads_list))
    if "fastmalloc" in args.allocators and "fastmalloc-harden" in args.allocators:
        out.append("## The cost of FASTMALLOC_HARDEN=1\n")
        out.append("fastmalloc-harden's throughput over fastmalloc's (1.00: no cost), and its peak RSS over "
                   "fastmalloc's (for idle256, the idle RSS).\n")
        out.append("| workload | " + " | ".join(f"{t} threads" for t in args.threads) + " | RSS |")
        out.append("|---" * (len(args.threads) + 2) + "|")
        for workload in args.workloads:
            key = "idle_rss_kb" if workload == "idle256" else "peak_rss_kb"
            line = [workload]
            for t in args.threads:
                h, f = by.get(("fastmalloc-harden", workload, t)), by.get(("fastmalloc", workload, t))
                line.append(f"{h['ops_per_sec'] / f['ops_per_sec']:.2f}" if h and f and workload != "idle256" else "-")
            rss = [(by[("fastmalloc-harden", workload, t)][key], by[("fastmalloc", workload, t)][key])
                   for t in args.threads if ("fastmalloc-harden", workload, t) in by and ("fastmalloc", workload, t) in by]
            line.append(f"{max(h for h, _ in rss) / max(f for _, f in rss):.2f}" if rss else "-")
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    out.append("Plots: `throughput_<workload>.png` (ops/s against threads, one line per allocator) and "
               "`rss.png` (peak RSS per workload).")
    return "\n".join(out) + "\n"


def render_held_rss(args, by, workload, threads_list):
    """RSS while every thread holds its set (heldset), after filling and after churn, in MiB."""
    out = ["RSS with every thread holding its set, after filling / after churn (MiB, and over glibc's):\n",
           "| threads | " + " | ".join(args.allocators) + " | " +
           " | ".join(f"{a} /glibc" for a in args.allocators if a != "glibc") + " |",
           "|---" * (1 + len(args.allocators) + len([a for a in args.allocators if a != "glibc"])) + "|"]
    for t in threads_list:
        cells = {a: by[(a, workload, t)] for a in args.allocators if (a, workload, t) in by}
        line = [str(t)] + [f"{cells[a]['filled_rss_kb'] / 1024:.1f} / {cells[a]['churned_rss_kb'] / 1024:.1f}"
                           if a in cells else "-" for a in args.allocators]
        g = cells.get("glibc")
        line += [f"{cells[a]['filled_rss_kb'] / g['filled_rss_kb']:.2f} / "
                 f"{cells[a]['churned_rss_kb'] / g['churned_rss_kb']:.2f}" if a in cells and g else "-"
                 for a in args.allocators if a != "glibc"]
        out.append("| " + " | ".join(line) + " |")
    out.append("")
    return out


def plot(args, rows):
    try:
        subprocess.run(["gnuplot", "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        print("bench: gnuplot not found; no plots")
        return
    out = os.path.abspath(args.out)
    for workload in args.workloads:
        if workload == "idle256":
            continue
        datafile = os.path.join(out, f"throughput_{workload}.dat")
        threads_list = sorted({r["threads"] for r in rows if r["workload"] == workload})
        by = {(r["allocator"], r["threads"]): r["ops_per_sec"] for r in rows if r["workload"] == workload}
        with open(datafile, "w") as f:
            f.write("threads " + " ".join(args.allocators) + "\n")
            for t in threads_list:
                f.write(f"{t} " + " ".join(f"{by.get((a, t), float('nan')) / 1e6:.4f}" for a in args.allocators) + "\n")
        lines = ", ".join(f"'{datafile}' using 1:{i + 2} with linespoints lw {4 if a == 'fastmalloc' else 2} "
                          f"lc rgb '{COLORS[a]}' title '{a}'" for i, a in enumerate(args.allocators))
        script = (f"set terminal pngcairo size 900,540 font 'sans,11'\n"
                  f"set output '{out}/throughput_{workload}.png'\n"
                  f"set title '{workload}: {args.descriptions.get(workload, '')}'\n"
                  f"set xlabel 'threads'\nset ylabel 'million operations per second'\n"
                  f"set logscale x 2\nset key outside right\nset grid\nset yrange [0:*]\n"
                  f"plot {lines}\n")
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    # Peak RSS per workload: the most any of its thread counts reached.
    datafile = os.path.join(out, "rss.dat")
    with open(datafile, "w") as f:
        f.write("workload " + " ".join(args.allocators) + "\n")
        for workload in args.workloads:
            vals = []
            for a in args.allocators:
                rs = [r for r in rows if r["workload"] == workload and r["allocator"] == a]
                key = "idle_rss_kb" if workload == "idle256" else "peak_rss_kb"
                vals.append(f"{max(float(r[key]) for r in rs) / 1024:.2f}" if rs else "nan")
            f.write(workload + " " + " ".join(vals) + "\n")
    cols = ", ".join(f"'{datafile}' using {i + 2}:xtic(1) lc rgb '{COLORS[a]}' title '{a}'"
                     for i, a in enumerate(args.allocators))
    script = (f"set terminal pngcairo size 1100,540 font 'sans,11'\nset output '{out}/rss.png'\n"
              f"set title 'Peak RSS per workload (the most over its thread counts; idle256: RSS while idle)'\n"
              f"set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8\n"
              f"set ylabel 'MiB'\nset logscale y\nset xtics rotate by -30\nset key outside right\nset grid ytics\n"
              f"plot {cols}\n")
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


if __name__ == "__main__":
    main()
