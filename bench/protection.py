"""The tables of bench/protection.sh, from its results.txt.

Usage: python3 bench/protection.py RESULTS MEMORY SIZE_MIB INITIAL_MIB

RESULTS holds one line per measurement, "what key=value ...", with what one
of copy, randwrite, latency, fsyncs (and server=...), initial, apply; MEMORY
the lines bench/memory.sh printed (or "bench/memory.sh missing"). A part
that was not run shows as "–".
"""
import re
import sys

SERVERS = ("nbdkit", "qemu-nbd", "journal", "replicated")
NAMES = {
    "nbdkit": "nbdkit (file plugin)",
    "qemu-nbd": "qemu-nbd",
    "journal": "Lifeboat, journal only",
    "replicated": "Lifeboat, replicated (tags every 5 s)",
}
RATE_IOPS = 5120  # fio --rate=20m at 4 KiB: 20 MiB/s
HELD = 0.97


def load(path):
    res = {}
    for line in open(path):
        f = line.split()
        if not f:
            continue
        d = dict(kv.split("=", 1) for kv in f[1:])
        res[(f[0], d.get("server", ""))] = d
    return res


def num(res, what, server, key):
    d = res.get((what, server))
    return float(d[key]) if d and key in d else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec=".0f", suffix=""):
    return "–" if x is None else f"{x:{spec}}{suffix}"


def fsync_bound(res, s):
    """(fsyncs per 1000 writes, bound per 1000 writes) of server s."""
    d = res.get(("fsyncs", s))
    if not d or not int(d["writes"]):
        return None, None
    w = int(d["writes"])
    return 1000 * int(d["fsyncs"]) / w, 1000 * (int(d["flushes"]) + int(d["sealed"])) / w


def memory_per_volume(lines):
    """The agent's peak RSS per busy volume, MiB, if memory.sh says it:
    its line "agent: peak_rss_mib=N idle_rss_mib=N per_busy_volume_mib=N
    volumes=N" ((peak - idle) / volumes), else a line naming agent, per
    and volume with a figure in MiB."""
    for line in lines:
        m = re.search(r"\bper_busy_volume_mib=([0-9.]+)", line)
        if m:
            return float(m.group(1))
    for line in lines:
        low = line.lower()
        if "agent" in low and "per" in low and "volume" in low:
            m = re.findall(r"([0-9.]+)\s*MiB", line)
            if m:
                return float(m[-1])
    return None


def main():
    res = load(sys.argv[1])
    try:
        memory = [l.rstrip("\n") for l in open(sys.argv[2])]
    except OSError:
        memory = ["memory part not run"]
    size, initial_mib = int(sys.argv[3]), int(sys.argv[4])

    print(f"\n### NBD: nbdcopy --flush of {size} MiB of random data; fio randwrite 4 KiB, iodepth 32\n")
    print("| server | nbdcopy s | MiB/s | vs nbdkit | randwrite IOPS | vs nbdkit | randwrite p99 µs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_copy = num(res, "copy", "nbdkit", "seconds")
    base_iops = num(res, "randwrite", "nbdkit", "iops")
    for s in SERVERS:
        secs = num(res, "copy", s, "seconds")
        iops = num(res, "randwrite", s, "iops")
        print(f"| {NAMES[s]} | {fmt(secs, '.2f')} | {fmt(size / secs if secs else None)} | "
              f"{fmt(ratio(base_copy, secs), '.2f', '×')} | {fmt(iops)} | {fmt(ratio(iops, base_iops), '.2f', '×')} | "
              f"{fmt(num(res, 'randwrite', s, 'p99_us'))} |")

    print(f"\n### Fixed rate: fio randwrite 4 KiB at --rate=20m ({RATE_IOPS} IOPS), --fsync=32, iodepth 8\n")
    print(f"| server | write p50 µs | write p99 µs | flush p99 µs | flushes per 1000 writes | IOPS achieved | rate held (≥ {HELD:.0%} of {RATE_IOPS}) | p99 vs journal only |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    base_p99 = num(res, "latency", "journal", "p99_us")
    for s in SERVERS:
        iops = num(res, "latency", s, "iops")
        held = "–" if iops is None else ("yes" if iops >= HELD * RATE_IOPS else "NO")
        p99 = num(res, "latency", s, "p99_us")
        w, fl = num(res, "latency", s, "writes"), num(res, "latency", s, "flushes")
        print(f"| {NAMES[s]} | {fmt(num(res, 'latency', s, 'p50_us'))} | {fmt(p99)} | "
              f"{fmt(num(res, 'latency', s, 'flush_p99_us'))} | {fmt(ratio(1000 * fl, w) if fl is not None else None)} | {fmt(iops)} | {held} | {fmt(ratio(p99, base_p99), '.2f', '×')} |")

    print("\n### fsyncs of the agent (strace -f) during fio randwrite 4 KiB, iodepth 32\n")
    print("fio randwrite sends no flush unless told (--fsync or --fdatasync): the client's flushes are 0 here.\n")
    print("| agent | writes | IOPS under strace | fsyncs | per 1000 writes | client flushes | segments sealed | bound per 1000 writes (flushes + sealed) | segment / directory / bitmap / backing / acked / other |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for s in ("journal", "replicated"):
        d = res.get(("fsyncs", s))
        if not d:
            print(f"| {NAMES[s]} | – | – | – | – | – | – | – | – |")
            continue
        per, bound = fsync_bound(res, s)
        print(f"| {NAMES[s]} | {d['writes']} | {d['iops']} | {d['fsyncs']} | {fmt(per, '.1f')} | {d['flushes']} | {d['sealed']} | "
              f"{fmt(bound, '.2f')} | {' / '.join(d.get(k, '–') for k in ('segment', 'dir', 'bitmap', 'backing', 'acked', 'other'))} |")

    cp, lb = num(res, "initial", "", "cp_s"), num(res, "initial", "", "lifeboat_s")
    print(f"\n### Initial replication of a {initial_mib} MiB image, 75 % zero (50 % holes, 25 % written zeros), 1 run\n")
    print("| | seconds | vs cp |")
    print("| --- | ---: | ---: |")
    print(f"| cp --sparse=always + sync | {fmt(cp, '.2f')} | {'1.00×' if cp else '–'} |")
    print(f"| Lifeboat, agent start to the resync-complete point | {fmt(lb, '.2f')} | {fmt(ratio(lb, cp), '.2f', '×')} |")

    ap = res.get(("apply", ""))
    print("\n### Process server into a fresh replica, incompressible (bench/ingest, end to end)\n")
    print(f"median {ap['mbps']} MB/s (runs: {ap['runs']})" if ap else "not run")

    print("\n### Peak RSS with 8 busy volumes (bench/memory.sh)\n")
    print("```")
    print("\n".join(memory))
    print("```")

    per_j, _ = fsync_bound(res, "journal")
    per_r, bound_r = fsync_bound(res, "replicated")
    copy = lambda s: ratio(base_copy, num(res, "copy", s, "seconds"))
    iops = lambda s: ratio(num(res, "randwrite", s, "iops"), base_iops)
    p99r = ratio(num(res, "latency", "replicated", "p99_us"), base_p99)
    lat_iops = num(res, "latency", "replicated", "iops")
    held_r = None if lat_iops is None else lat_iops >= HELD * RATE_IOPS
    init = ratio(lb, cp)
    apply_mbps = float(ap["mbps"]) if ap else None
    mem = memory_per_volume(memory)

    def met(ok):
        return "–" if ok is None else ("MET" if ok else "MISSED")

    rows = [
        ("4 KiB randwrite IOPS, replicated / nbdkit", "≥ 0.5×", fmt(iops("replicated"), ".2f", "×"),
         None if iops("replicated") is None else iops("replicated") >= 0.5),
        ("4 KiB randwrite IOPS, journal only / nbdkit", "≥ 0.8×", fmt(iops("journal"), ".2f", "×"),
         None if iops("journal") is None else iops("journal") >= 0.8),
        (f"nbdcopy {size} MiB, replicated / nbdkit", "≥ 0.6×", fmt(copy("replicated"), ".2f", "×"),
         None if copy("replicated") is None else copy("replicated") >= 0.6),
        (f"nbdcopy {size} MiB, journal only / nbdkit", "≥ 0.8×", fmt(copy("journal"), ".2f", "×"),
         None if copy("journal") is None else copy("journal") >= 0.8),
        ("p99 at 20 MB/s 4 KiB + fsync/32, replicated / journal only", "≤ 1.5×, rate held",
         "–" if p99r is None else f"{p99r:.2f}×, rate {'held' if held_r else 'NOT held'} ({lat_iops:.0f} IOPS)",
         None if p99r is None or held_r is None else p99r <= 1.5 and held_r),
        ("fsyncs per 1000 writes, replicated, steady state", "≤ the client's flushes + 1 per sealed segment",
         "–" if per_r is None else f"{per_r:.1f} (bound {bound_r:.2f}; journal only {fmt(per_j, '.1f')})",
         None if per_r is None else per_r <= bound_r),
        (f"initial replication {initial_mib} MiB 75 % zero / cp --sparse=always", "≤ 1.2×", fmt(init, ".2f", "×"),
         None if init is None else init <= 1.2),
        ("process server into a fresh replica, incompressible", "≥ 400 MB/s", fmt(apply_mbps, ".1f", " MB/s"),
         None if apply_mbps is None else apply_mbps >= 400),
        ("agent peak RSS per busy volume (8 volumes at once)", "≤ 32 MiB",
         fmt(mem, ".1f", " MiB") if mem is not None
         else memory[0] if memory in (["bench/memory.sh missing"], ["memory part not run"]) else "see bench/memory.sh above",
         None if mem is None else mem <= 32),
    ]
    print("\n### Goals (issue 13)\n")
    print("| what | goal | measured | |")
    print("| --- | --- | --- | --- |")
    for what, goal, value, ok in rows:
        print(f"| {what} | {goal} | {value} | {met(ok)} |")


if __name__ == "__main__":
    main()
