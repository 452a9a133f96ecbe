#!/usr/bin/env bash
# bench/nbd.sh — the Lifeboat NBD export (journaling on) beside nbdkit's file
# plugin and qemu-nbd, same machine, same run, same backing directory
# (BENCHMARKS.md, "NBD and FUSE front ends (issue 3)").
#
#   nbdcopy --flush of SIZE of random data into each server   RUNS runs, median seconds
#   fio 4 KiB randwrite, iodepth 32, FIOTIME seconds           RUNS runs, median IOPS and p99
#   dd of SIZE through a loop device over the FUSE file vs over a plain file (root only)
#
# Usage, from the repository root:   bench/nbd.sh
# Environment: RUNS=5 FIOTIME=30 SIZE_MIB=1024 WORK=DIR (default: a new dir under $TMPDIR)
#   REPLICATED=1 adds "lifeboat-repl": the agent replicating to a `lifeboat server` on
#   this machine (127.0.0.1, file target in WORK), measured like the others.
#   LIFEBOAT=BINARY measures that lifeboat binary instead of building one; DD=0 skips the dd part.
# Needs: nbdcopy, nbdinfo (libnbd-bin), nbdkit, qemu-nbd (qemu-utils), fio, python3;
# losetup and root for the dd part. Every process it starts is stopped by PID.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

RUNS=${RUNS:-5}
FIOTIME=${FIOTIME:-30}
SIZE_MIB=${SIZE_MIB:-1024}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-nbdbench.XXXXXX")}
mkdir -p "$WORK"
PORT=10850
pids=()
loops=()
mounts=()

cleanup() {
	for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
	for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

for t in nbdcopy nbdinfo nbdkit qemu-nbd fio python3; do
	command -v "$t" >/dev/null || { echo "nbd.sh: $t is missing (see .ci/run for the packages)" >&2; exit 2; }
done

echo "# machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
	"$(uname -r), work dir $WORK on $(df -T "$WORK" | awk 'NR==2 {print $2 " " $1}')"
echo "# $(nbdkit --version | head -1); $(qemu-nbd --version | head -1); $(fio --version); $(go env GOVERSION)"
if [[ -n ${LIFEBOAT:-} ]]; then cp "$LIFEBOAT" "$WORK/lifeboat"; else go build -o "$WORK/lifeboat" ./cmd/lifeboat; fi
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/src.img"

wait_port() { # wait until an NBD server answers on $1
	for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$1/disk" >/dev/null 2>&1 && return 0; sleep 0.1; done
	echo "nbd.sh: no NBD server on port $1" >&2; return 1
}

# start SERVER: starts it on a fresh sparse backing file, sets $pid and $uri.
start() {
	local server=$1
	PORT=$((PORT + 1))
	rm -rf "$WORK/b" && mkdir -p "$WORK/b"
	truncate -s "${SIZE_MIB}M" "$WORK/b/disk.img"
	case $server in
	lifeboat) "$WORK/lifeboat" agent --nbd "127.0.0.1:$PORT" --volume "disk=$WORK/b/disk.img" \
			--journal-dir "$WORK/b/journal" >"$WORK/b/agent.log" 2>&1 & ;;
	lifeboat-repl) "$WORK/lifeboat" agent --nbd "127.0.0.1:$PORT" --volume "disk=$WORK/b/disk.img" \
			--journal-dir "$WORK/b/journal" --server "https://127.0.0.1:$SPORT" --cert "$WORK/certs/bench.crt" \
			--key "$WORK/certs/bench.key" --ca "$WORK/certs/ca.crt" >"$WORK/b/agent.log" 2>&1 & ;;
	nbdkit) nbdkit -f -i 127.0.0.1 -p "$PORT" file "$WORK/b/disk.img" & ;;
	qemu-nbd) qemu-nbd --persistent -f raw -b 127.0.0.1 -p "$PORT" -x disk "$WORK/b/disk.img" & ;;
	esac
	pid=$!
	pids+=("$pid")
	uri="nbd://127.0.0.1:$PORT/disk"
	wait_port "$PORT"
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

servers=(lifeboat nbdkit qemu-nbd)
if [[ ${REPLICATED:-0} == 1 ]]; then
	# One site for every run; each run's agent has a new journal, so a new volume there.
	"$WORK/lifeboat" server init --data-dir "$WORK/site" >/dev/null
	"$WORK/lifeboat" certs issue --data-dir "$WORK/site" --name bench --out "$WORK/certs" >/dev/null
	SPORT=$((PORT + 500))
	"$WORK/lifeboat" server --data-dir "$WORK/site" --listen "127.0.0.1:$SPORT" --target "file://$WORK/replicas" \
		>"$WORK/srv.out" 2>"$WORK/srv.log" &
	pids+=("$!")
	for _ in $(seq 100); do grep -q listening "$WORK/srv.out" 2>/dev/null && break; sleep 0.1; done
	servers=(lifeboat lifeboat-repl nbdkit qemu-nbd)
fi
results=$WORK/results.txt
: >"$results"
for run in $(seq "$RUNS"); do
	for s in "${servers[@]}"; do
		start "$s"
		t0=$(date +%s.%N)
		nbdcopy --flush "$WORK/src.img" "$uri"
		t1=$(date +%s.%N)
		echo "copy $s $(python3 -c "print($t1 - $t0)")" >>"$results"
		stop
	done
	for s in "${servers[@]}"; do
		start "$s"
		fio --name=randwrite --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 \
			--size="${SIZE_MIB}M" --time_based --runtime="$FIOTIME" --output-format=json --output="$WORK/fio.json" >/dev/null
		python3 - "$s" "$WORK/fio.json" >>"$results" <<'PY'
import json, sys
w = json.load(open(sys.argv[2]))["jobs"][0]["write"]
print("fio", sys.argv[1], w["iops"], w["clat_ns"]["percentile"]["99.000000"] / 1000)
PY
		stop
	done
	echo "# run $run done" >&2
done

if [[ ${DD:-1} != 0 && $(id -u) -eq 0 ]] && command -v losetup >/dev/null; then
	for run in $(seq "$RUNS"); do
		# plain file under a loop device
		truncate -s "${SIZE_MIB}M" "$WORK/plain.img"
		loop=$(losetup -f --show "$WORK/plain.img"); loops+=("$loop")
		t0=$(date +%s.%N); dd if="$WORK/src.img" of="$loop" bs=1M oflag=direct conv=fsync status=none; t1=$(date +%s.%N)
		echo "dd plain $(python3 -c "print($t1 - $t0)")" >>"$results"
		losetup -d "$loop"; loops=("${loops[@]/$loop}"); rm -f "$WORK/plain.img"
		# the Lifeboat FUSE file under a loop device
		rm -rf "$WORK/b" "$WORK/mnt" && mkdir -p "$WORK/b" "$WORK/mnt"
		"$WORK/lifeboat" agent --nbd "" --fuse-mount "$WORK/mnt" --volume "disk=$WORK/b/disk.img,size=${SIZE_MIB}MiB" \
			--journal-dir "$WORK/b/journal" >"$WORK/b/agent.log" 2>&1 &
		pid=$!; pids+=("$pid"); mounts+=("$WORK/mnt")
		for _ in $(seq 100); do [[ -e $WORK/mnt/disk ]] && break; sleep 0.1; done
		loop=$(losetup -f --show "$WORK/mnt/disk"); loops+=("$loop")
		t0=$(date +%s.%N); dd if="$WORK/src.img" of="$loop" bs=1M oflag=direct conv=fsync status=none; t1=$(date +%s.%N)
		echo "dd fuse $(python3 -c "print($t1 - $t0)")" >>"$results"
		losetup -d "$loop"; loops=("${loops[@]/$loop}")
		stop
	done
else
	echo "# dd part skipped: needs root and losetup" >&2
fi

python3 - "$results" "$SIZE_MIB" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rows[(f[0], f[1])].append([float(x) for x in f[2:]])
mib = int(sys.argv[2])
med = lambda k, i: statistics.median(r[i] for r in rows[k])
n = lambda k: len(rows[k])
print(f"\n| nbdcopy --flush {mib} MiB | median s | MiB/s | vs nbdkit | runs |")
print("| --- | ---: | ---: | ---: | ---: |")
for s in ("lifeboat", "lifeboat-repl", "nbdkit", "qemu-nbd"):
    k = ("copy", s)
    if rows[k]:
        print(f"| {s} | {med(k,0):.2f} | {mib/med(k,0):.0f} | {med(('copy','nbdkit'),0)/med(k,0):.2f}x | {n(k)} |")
print(f"\n| fio randwrite 4 KiB, iodepth 32 | median IOPS | median p99 us | IOPS vs nbdkit | runs |")
print("| --- | ---: | ---: | ---: | ---: |")
for s in ("lifeboat", "lifeboat-repl", "nbdkit", "qemu-nbd"):
    k = ("fio", s)
    if rows[k]:
        print(f"| {s} | {med(k,0):.0f} | {med(k,1):.0f} | {med(k,0)/med(('fio','nbdkit'),0):.2f}x | {n(k)} |")
if rows[("dd", "plain")]:
    print(f"\n| dd {mib} MiB, bs=1M, oflag=direct, conv=fsync, through a loop device | median s | MiB/s | vs plain | runs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for s in ("plain", "fuse"):
        k = ("dd", s)
        print(f"| {s} | {med(k,0):.2f} | {mib/med(k,0):.0f} | {med(('dd','plain'),0)/med(k,0):.2f}x | {n(k)} |")
PY
