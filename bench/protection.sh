#!/usr/bin/env bash
# bench/protection.sh LIFEBOAT — the cost of protection, side by side, in one
# run (issue 13): nbdkit (file plugin), qemu-nbd, the Lifeboat agent
# journaling only, and the agent replicating to a `lifeboat server` on this
# machine (--tag-interval 5s), each on a fresh sparse backing file of SIZE_MIB
# in WORK; then the issue's goals table with the ratios.
#
# Parts (PARTS="nbd latency fsyncs initial apply memory", any subset, in
# that order):
#   nbd      nbdcopy --flush of SIZE_MIB of random data into the export
#            (MiB/s), and fio 4 KiB randwrite, iodepth 32, FIOTIME s (IOPS)
#   latency  fio 4 KiB randwrite at a fixed --rate=20m (5120 IOPS) with
#            --fsync=32, iodepth 8, LATTIME s: p50/p99 completion latency,
#            achieved IOPS, rate held (>= 97 % of 5120); with LAT_FILL=1
#            (default) each export is filled once first (steady state; 0: a
#            fresh volume, where the replicated agent syncs its bitmap for
#            each region's first write). fio 3.33 at iodepth 8 sends about
#            one flush per 5 writes, not per 32 (against nbdkit too): the
#            table shows the flushes it sent
#   fsyncs   the agent's fsync+fdatasync calls (strace -f, attached to it)
#            during the same fio randwrite as in nbd, FSYNCTIME s after a
#            warm-up (the volume written once, as bench/fsyncs.sh does, then
#            FSYNC_WARMUP s of the load: past the bitmap's 10 s ClearDelay, so
#            that clearing and re-marking regions is in the count), per 1000
#            writes; the client's flushes (none: fio randwrite sends none
#            unless told); the journal segments sealed meanwhile (the
#            distinct .hrl files fsynced)
#   initial  bench/replication.sh initial, RUNS=1, INITIAL_MIB image (75 %
#            zero: holes and written zeros) vs cp --sparse=always + sync
#   apply    bench/replication.sh apply, end to end only (bench/ingest),
#            incompressible, fresh replica, INGEST_RUNS runs of SEGMENTS x 32 MiB
#   memory   bench/memory.sh LIFEBOAT, when it exists
#
# Environment (defaults in brackets):
#   OUT=DIR      results, kept [a new dir under $TMPDIR]: summary.md,
#                results.txt, verbose.log (every command run, with its output)
#   WORK=DIR     scratch files, removed at exit [$OUT/work]; its file system
#                is the one measured
#   COMMIT=LABEL [git rev-parse --short HEAD, +dirty]
#   SIZE_MIB=1024 FIOTIME=20 LATTIME=30 LAT_FILL=1 FSYNCTIME=15 FSYNC_WARMUP=10 INITIAL_MIB=4096
#   INGEST_RUNS=3 SEGMENTS=32 DROP_CACHES=1 (initial, root)
#
# Needs: nbdcopy, nbdinfo, nbdkit, qemu-nbd, fio (nbd engine), strace,
# python3, go (the initial and apply parts build bench/ingest). Every process
# it starts is stopped by PID at exit; every port is a free one on 127.0.0.1.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")/.."
if [[ $# -ne 1 || ! -x $1 ]]; then
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
fi
LIFEBOAT=$(readlink -f "$1")
export LIFEBOAT # replication.sh measures this binary too

source bench/lib.sh # stop_pid, free_port, out_work, machine, build_lifeboat, start_server, start_agent, wait_resync

PARTS=${PARTS:-nbd latency fsyncs initial apply memory}
SIZE_MIB=${SIZE_MIB:-1024}
FIOTIME=${FIOTIME:-20}
LATTIME=${LATTIME:-30}
LAT_FILL=${LAT_FILL:-1}
FSYNCTIME=${FSYNCTIME:-15}
FSYNC_WARMUP=${FSYNC_WARMUP:-10}
INITIAL_MIB=${INITIAL_MIB:-4096}
INGEST_RUNS=${INGEST_RUNS:-3}
SEGMENTS=${SEGMENTS:-32}
DROP_CACHES=${DROP_CACHES:-1}
for p in $PARTS; do
	case $p in
	nbd | latency | fsyncs | initial | apply | memory) ;;
	*) echo "protection.sh: unknown part $p in PARTS (nbd latency fsyncs initial apply memory)" >&2; exit 2 ;;
	esac
done
for t in nbdcopy nbdinfo nbdkit qemu-nbd fio strace python3; do
	command -v "$t" >/dev/null || { echo "protection.sh: $t is missing (see .ci/deps)" >&2; exit 2; }
done

out_work protection

pids=()
cleanup() {
	local i
	set +x
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
	if [[ ${KEEP_WORK:-0} != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
# A signal ends the script through its EXIT trap (after the command in the
# foreground, e.g. fio, returns).
trap 'exit 130' INT
trap 'exit 143' TERM

# Every command from here on, with its output, goes to verbose.log; the
# terminal gets the progress lines (say) and the tables.
exec 3>&1 9>>"$OUT/verbose.log"
BASH_XTRACEFD=9
PS4='+ ${EPOCHREALTIME} ' # the Unix time of each command, to see where a run spends it
say() { echo "$@" >&3; echo "## $*" >&9; }
set -x

results=$OUT/results.txt
: >"$results"
bin=$WORK/bin
srv_url=

machine protection 2>&9 >&3
{
	echo "binary: $LIFEBOAT (sha256 $(sha256sum "$LIFEBOAT" | cut -c1-16))"
	echo "peers: $(nbdkit --version | head -1); $(qemu-nbd --version | head -1); $(fio --version)"
	echo "parts: $PARTS; SIZE_MIB=$SIZE_MIB FIOTIME=$FIOTIME LATTIME=$LATTIME LAT_FILL=$LAT_FILL FSYNCTIME=$FSYNCTIME FSYNC_WARMUP=$FSYNC_WARMUP INITIAL_MIB=$INITIAL_MIB INGEST_RUNS=$INGEST_RUNS SEGMENTS=$SEGMENTS"
} 2>&9 | tee -a "$OUT/machine-protection.txt" >&3
build_lifeboat

servers=(nbdkit qemu-nbd journal replicated)

# export_up SERVER DIR: SERVER on a fresh sparse DIR/disk.img of SIZE_MIB;
# sets nbd_uri, agent_pid (the agent, or the peer) and srv_pid (replicated).
export_up() {
	local s=$1 dir=$2 port
	rm -rf "$dir" && mkdir -p "$dir"
	truncate -s "${SIZE_MIB}M" "$dir/disk.img"
	srv_url='' srv_pid=''
	case $s in
	nbdkit | qemu-nbd)
		port=$(free_port)
		if [[ $s == nbdkit ]]; then
			nbdkit -f -i 127.0.0.1 -p "$port" file "$dir/disk.img" >"$dir/peer.log" 2>&1 &
		else
			qemu-nbd --persistent -f raw -b 127.0.0.1 -p "$port" -x v1 "$dir/disk.img" >"$dir/peer.log" 2>&1 &
		fi
		agent_pid=$!
		pids+=("$agent_pid")
		nbd_uri=nbd://127.0.0.1:$port/v1
		;;
	journal) start_agent "$dir" "$dir/disk.img" ;;
	replicated)
		start_server "$dir"
		start_agent "$dir" "$dir/disk.img" --tag-interval 5s
		;;
	esac
	for _ in $(seq 100); do
		nbdinfo --size "$nbd_uri" >/dev/null 2>&1 && break
		sleep 0.2
	done
	nbdinfo --size "$nbd_uri" >/dev/null
	# Replicated: measure once the initial replication (of an empty
	# volume: nothing but holes) is over, as in steady state.
	if [[ $s == replicated ]]; then wait_resync "$dir" 300 >/dev/null; fi
}

export_down() {
	stop_pid "$agent_pid"
	if [[ -n $srv_pid ]]; then stop_pid "$srv_pid"; fi
}

# fio_write JSON ARGS...: fio 4 KiB random writes through the nbd engine
# into nbd_uri; the JSON output in JSON.
fio_write() {
	local json=$1
	shift
	fio --name=w --ioengine=nbd --uri="$nbd_uri" --rw=randwrite --bs=4k --size="${SIZE_MIB}M" --time_based \
		"$@" --output-format=json --output="$json" >&9 2>&1
}

# fio_fields JSON: "iops=… p50_us=… p99_us=… writes=… flushes=… flush_p99_us=…"
fio_fields() {
	python3 - "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
w, s = j["write"], j.get("sync", {})
pc = w["clat_ns"].get("percentile", {})
sp = s.get("lat_ns", {}).get("percentile", {})
print(f"iops={w['iops']:.1f} p50_us={pc.get('50.000000', 0) / 1e3:.0f} p99_us={pc.get('99.000000', 0) / 1e3:.0f}"
      f" writes={w['total_ios']} flushes={s.get('total_ios', 0)} flush_p99_us={sp.get('99.000000', 0) / 1e3:.0f}")
PY
}

# fill_volume: the whole export written once, sequentially (1 MiB, iodepth
# 4): the working set of a steady state, as bench/fsyncs.sh warms up (a
# replicated agent's bitmap marks, and syncs, each region's first write
# after the initial replication).
fill_volume() {
	fio --name=fill --ioengine=nbd --uri="$nbd_uri" --rw=write --bs=1M --iodepth=4 --size="${SIZE_MIB}M" >&9 2>&1
}

part_nbd() {
	local s d t0 t1
	say "== nbd: nbdcopy --flush of $SIZE_MIB MiB of random data; fio randwrite 4 KiB, iodepth 32, ${FIOTIME}s"
	head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/src.img"
	for s in "${servers[@]}"; do
		d=$WORK/nbd-$s
		export_up "$s" "$d"
		t0=$(now)
		nbdcopy --flush "$WORK/src.img" "$nbd_uri"
		t1=$(now)
		export_down
		echo "copy server=$s seconds=$(python3 -c "print(f'{$t1 - $t0:.3f}')")" | tee -a "$results" >&3
		export_up "$s" "$d"
		fio_write "$d/fio.json" --iodepth=32 --runtime="$FIOTIME"
		export_down
		echo "randwrite server=$s $(fio_fields "$d/fio.json")" | tee -a "$results" >&3
		rm -rf "$d"
	done
	rm -f "$WORK/src.img"
}

part_latency() {
	local s d
	say "== latency: fio randwrite 4 KiB at --rate=20m (5120 IOPS), --fsync=32, iodepth 8, ${LATTIME}s"
	for s in "${servers[@]}"; do
		d=$WORK/lat-$s
		export_up "$s" "$d"
		if [[ $LAT_FILL == 1 ]]; then fill_volume; fi
		fio_write "$d/fio.json" --iodepth=8 --rate=20m --fsync=32 --runtime="$LATTIME"
		export_down
		echo "latency server=$s $(fio_fields "$d/fio.json")" | tee -a "$results" >&3
		rm -rf "$d"
	done
}

part_fsyncs() {
	local s d spid
	say "== fsyncs: strace -f -e trace=fsync,fdatasync on the agent during fio randwrite 4 KiB, iodepth 32, ${FSYNCTIME}s"
	for s in journal replicated; do
		d=$WORK/fsyncs-$s
		export_up "$s" "$d"
		# Warm-up as bench/fsyncs.sh: the volume filled, then the measured load.
		fill_volume
		fio_write "$d/warmup.json" --iodepth=32 --runtime="$FSYNC_WARMUP"
		# -C: the per-call lines (with -y, the file of each fd: what is
		# synced) and the -c summary at the end.
		strace -C -f -y -e trace=fsync,fdatasync -e signal=none -o "$d/strace.txt" -p "$agent_pid" 2>&9 &
		spid=$!
		pids+=("$spid")
		sleep 0.5
		fio_write "$d/fio.json" --iodepth=32 --runtime="$FSYNCTIME"
		kill -INT "$spid"
		wait "$spid" 2>/dev/null || true
		cat "$d/strace.txt" >&9
		export_down
		echo "fsyncs server=$s $(fio_fields "$d/fio.json") $(fsync_fields "$d/strace.txt" 2>&9)" | tee -a "$results" >&3
		rm -rf "$d"
	done
}

# fsync_fields STRACE: "fsyncs=N sealed=S" and the calls by what they synced:
# segment files, directories, dirty bitmap, backing file, acked file, other. fsyncs is
# the strace -c total; sealed the distinct segment files synced (the client
# sends no flush, so only a seal syncs a segment). The count per file goes
# to stderr (verbose.log). Run it before the files are removed.
fsync_fields() {
	python3 - "$1" <<'PY'
import collections, os, re, sys
total, paths = 0, collections.Counter()
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 5 and f[-1] == "total":
        total = int(f[3])
    m = re.search(r"\b(?:fsync|fdatasync)\(\d+<([^>]*)>", line)
    if m:
        paths[m.group(1)] += 1
kinds = dict.fromkeys(("segment", "dir", "bitmap", "backing", "acked", "other"), 0)
for p, n in paths.most_common():
    k = ("segment" if p.endswith(".hrl") else "dir" if os.path.isdir(p) else "bitmap" if p.endswith("dirty.bitmap")
         else "backing" if p.endswith("disk.img") else "acked" if p.endswith("/acked") else "other")
    kinds[k] += n
    print(f"fsyncs {n:6d} {k:8s} {p}", file=sys.stderr)
sealed = sum(1 for p in paths if p.endswith(".hrl"))
print(f"fsyncs={total} sealed={sealed} " + " ".join(f"{k}={v}" for k, v in kinds.items()))
PY
}

part_initial() {
	say "== initial: bench/replication.sh initial, RUNS=1 SIZE_MIB=$INITIAL_MIB (output in verbose.log)"
	RUNS=1 SIZE_MIB=$INITIAL_MIB OUT=$OUT/initial WORK=$WORK/initial DROP_CACHES=$DROP_CACHES COMMIT=$COMMIT \
		bench/replication.sh initial >&9 2>&1
	python3 - "$OUT/initial/initial.txt" <<'PY' | tee -a "$results" >&3
import sys
d = {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[:1] == ["run"]:
        d[f[2]] = f[4]
print(f"initial cp_s={d['cp']} lifeboat_s={d['lifeboat']}")
PY
}

part_apply() {
	say "== apply: bench/replication.sh apply, end to end, incompressible, fresh, $INGEST_RUNS x $SEGMENTS x 32 MiB (output in verbose.log)"
	RUNS=$INGEST_RUNS SEGMENTS=$SEGMENTS GOTEST=0 KINDS=incompressible MODES=fresh OUT=$OUT/apply WORK=$WORK/apply \
		COMMIT=$COMMIT bench/replication.sh apply >&9 2>&1
	python3 - "$OUT/apply/ingest.txt" <<'PY' | tee -a "$results" >&3
import statistics, sys
rs = [dict(zip(f[0::2], f[1::2])) for f in (l.split() for l in open(sys.argv[1])) if f[:1] == ["run"]]
mbps = [int(d["raw_bytes"]) / float(d["applied_s"]) / 1e6 for d in rs]
print(f"apply mbps={statistics.median(mbps):.1f} runs={','.join(f'{x:.0f}' for x in mbps)}")
PY
}

part_memory() {
	if [[ ! -f bench/memory.sh ]]; then
		say "== memory: bench/memory.sh missing"
		echo "bench/memory.sh missing" >"$OUT/memory.txt"
		return 0
	fi
	say "== memory: bench/memory.sh $LIFEBOAT"
	OUT=$OUT/memory WORK=$WORK/memory bash bench/memory.sh "$LIFEBOAT" 2>&9 | tee "$OUT/memory.txt" >&3
}

start=$(date +%s)
took=
for p in $PARTS; do
	t0=$(date +%s)
	"part_$p"
	took+="$p $(($(date +%s) - t0)) s; "
done
say "== all parts done in $(($(date +%s) - start)) s (${took%; }); loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

python3 bench/protection.py "$results" "$OUT/memory.txt" "$SIZE_MIB" "$INITIAL_MIB" | tee "$OUT/summary.md" >&3
echo "raw results and verbose.log: $OUT" >&3
