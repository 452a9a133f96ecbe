#!/usr/bin/env bash
# bench/recovery.sh — recovery volumes (BENCHMARKS.md, "Recovery volumes
# (issue 12)"), all in one run on one site:
#
#   open     from `lifeboat test-failover start` to the first 4 KiB NBD read
#            returned, for a SMALL_GIB and a BIG_GIB volume (both hold the
#            same DATA_MIB of random data at offset 0), RUNS runs each,
#            cleanup between; median ms and the big/small ratio
#   read     nbdcopy --no-extents (every byte read, holes too) of the whole
#            SMALL_GIB volume to null: from the test
#            failover volume and from the agent's own export, RUNS runs each
#   fio      fio 4 KiB randrw (50/50), iodepth 32, FIOTIME s: on the test
#            failover volume and on the agent's export, RUNS runs each
#
# Usage, from the repository root:   bench/recovery.sh
# Environment: RUNS=5 SMALL_GIB=1 BIG_GIB=16 DATA_MIB=256 FIOTIME=20
#              WORK=DIR (default: a new dir under $TMPDIR; removed at exit)
# Needs: go, qemu-io, nbdcopy (libnbd-bin), fio with the nbd engine, python3.
# Every process it starts is stopped by PID; ports are ephemeral, 127.0.0.1.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
source bench/lib.sh

RUNS=${RUNS:-5}
SMALL_GIB=${SMALL_GIB:-1}
BIG_GIB=${BIG_GIB:-16}
DATA_MIB=${DATA_MIB:-256}
FIOTIME=${FIOTIME:-20}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-recbench.XXXXXX")}
mkdir -p "$WORK"
WORK=$(readlink -f "$WORK")
COMMIT=$(git rev-parse --short HEAD)
if [[ -n $(git status --porcelain --untracked-files=no) ]]; then COMMIT+="+dirty"; fi
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do stop_pid "$p"; done
	rm -rf "$WORK"
}
trap cleanup EXIT
for t in qemu-io nbdcopy fio python3; do
	command -v "$t" >/dev/null || { echo "recovery.sh: $t is missing (see .ci/deps)" >&2; exit 2; }
done

machine_common
echo "work: $WORK on $(df -T "$WORK" | awk 'NR==2 {print $2 " " $1}')"
go build -o "$WORK/lifeboat" ./cmd/lifeboat
lb="$WORK/lifeboat"
srv=$WORK/server
"$lb" server init --data-dir "$srv" >/dev/null
"$lb" certs issue --data-dir "$srv" --name bench --out "$WORK/certs" >/dev/null
port=$(free_port) recport=$(free_port) agentport=$(free_port)
"$lb" server --data-dir "$srv" --listen "127.0.0.1:$port" --recovery-nbd "127.0.0.1:$recport" >"$WORK/server.log" 2>&1 &
pids+=($!)
for v in small big; do
	gib=$SMALL_GIB
	[[ $v == big ]] && gib=$BIG_GIB
	truncate -s "${gib}G" "$WORK/$v.img"
	head -c "$((DATA_MIB << 20))" /dev/urandom | dd of="$WORK/$v.img" conv=notrunc status=none
done
"$lb" agent --volume "small=$WORK/small.img" --volume "big=$WORK/big.img" --journal-dir "$WORK/journal" \
	--nbd "127.0.0.1:$agentport" --server "https://127.0.0.1:$port" --cert "$WORK/certs/bench.crt" \
	--key "$WORK/certs/bench.key" --ca "$WORK/certs/ca.crt" --tag-interval 5s >"$WORK/agent.log" 2>&1 &
pids+=($!)
admin=(--server "https://127.0.0.1:$port" --data-dir "$srv")
echo "# waiting for the initial replication of both volumes"
for _ in $(seq 600); do
	n=$("$lb" volume list "${admin[@]}" --output json 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for v in json.load(sys.stdin) if v["points"] > 0))' || echo 0)
	[[ $n == 2 ]] && break
	sleep 0.5
done
[[ $n == 2 ]] || { echo "recovery.sh: no initial replication" >&2; tail "$WORK/agent.log" "$WORK/server.log" >&2; exit 1; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
now_ms() { date +%s%N | awk '{printf "%.1f\n", $1 / 1e6}'; }

# open VOL: ms from test-failover start to the first NBD read returned.
open_ms() {
	local v=$1 t0 t1 url
	t0=$(now_ms)
	url=$("$lb" test-failover start "$v" "${admin[@]}" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
	qemu-io -f raw -r -c "read 0 4k" "$url" >/dev/null
	t1=$(now_ms)
	"$lb" test-failover cleanup "$v" "${admin[@]}" >/dev/null
	echo "$t1 - $t0" | bc
}

echo "## open: test-failover start → first 4 KiB NBD read (ms), $RUNS runs each"
declare -A med
for v in small big; do
	vals=()
	for _ in $(seq "$RUNS"); do vals+=("$(open_ms "$v")"); done
	med[$v]=$(printf '%s\n' "${vals[@]}" | median)
	echo "open $v: runs ${vals[*]}; median ${med[$v]} ms"
done
echo "open ratio big/small: $(echo "scale=2; ${med[big]} / ${med[small]}" | bc)"

url=$("$lb" test-failover start small "${admin[@]}" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
agent="nbd://127.0.0.1:$agentport/small"
echo "## read: nbdcopy --no-extents of ${SMALL_GIB} GiB to null (s), $RUNS runs each"
for side in view agent; do
	u=$url
	[[ $side == agent ]] && u=$agent
	vals=()
	for _ in $(seq "$RUNS"); do
		t0=$(now_ms)
		nbdcopy --no-extents "$u" null:
		t1=$(now_ms)
		vals+=("$(echo "scale=3; ($t1 - $t0) / 1000" | bc)")
	done
	m=$(printf '%s\n' "${vals[@]}" | median)
	echo "read $side: runs ${vals[*]}; median $m s = $(echo "scale=0; $SMALL_GIB * 1024 / $m" | bc) MiB/s"
done
echo "## fio: 4 KiB randrw 50/50, iodepth 32, ${FIOTIME}s (IOPS read+write), $RUNS runs each"
for side in view agent; do
	u=$url
	[[ $side == agent ]] && u=$agent
	vals=()
	for _ in $(seq "$RUNS"); do
		if ! fio --name=rr --ioengine=nbd --uri="$u" --rw=randrw --bs=4k --iodepth=32 --size="${SMALL_GIB}G" \
			--time_based --runtime="$FIOTIME" --output-format=json --output="$WORK/fio.json" >"$WORK/fio.log" 2>&1; then
			cat "$WORK/fio.log" "$WORK/fio.json" >&2
			exit 1
		fi
		vals+=("$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(round(j["read"]["iops"] + j["write"]["iops"]))' "$WORK/fio.json")")
	done
	echo "fio $side: runs ${vals[*]}; median $(printf '%s\n' "${vals[@]}" | median) IOPS"
done
"$lb" test-failover cleanup small "${admin[@]}" >/dev/null
