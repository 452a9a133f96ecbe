#!/usr/bin/env bash
# bench/failback.sh — reprotect and failback (BENCHMARKS.md, "Failback: delta
# vs full copy (issue 14)"): a SIZE volume with 1 % changed at the site and
# 0.5 % written at the source that the site never got, failed back in two
# ways (RUNS times each, alternating) in the same run, each time from a fresh
# site built the same way (the same data, the same writes at the same offsets):
#
#   delta    lifeboat reprotect --verify --force, then lifeboat failback
#   full     lifeboat reprotect --full --force, then lifeboat failback: a
#            full copy of the volume over the same path (failover volume →
#            reverse shipper → master target → primary disk)
#
# Each run: a server (--recovery-nbd) and an agent replicate the volume (a
# sparse SIZE image with DATA_MIB of random data at 32 MiB); the server is
# stopped (SIGTERM), 0.5 % of SIZE of random data is written through the
# agent's NBD export over that data (a quarter into it), the agent is
# killed (SIGKILL) and the server started again; `failover start --point
# latest`; 1 % of SIZE is written to the failover volume in 4 KiB blocks of
# random bytes at random offsets (one source file per block: nothing
# dedupes or compresses); the bytes of the 4 KiB blocks in which the
# primary disk and the failover volume differ are counted (bench/blockdiff);
# `lifeboat master-target` starts beside the primary disk. "time" is from
# `lifeboat reprotect` to `lifeboat failback` returned, with the polls of
# `test-failover list` in between that read the reverse shipper's bytes
# once its first sync is acknowledged (failback drops that status). After
# the failback the primary disk is checked equal to the failover volume.
#
# Usage, from the repository root:   bench/failback.sh [BINARY]
#   BINARY: a lifeboat binary to measure (default: built from this tree).
# Environment: SIZE=4GiB (bytes, or with a K/M/G/T[i][B] suffix; binary units)
#   DATA_MIB=256 SEED=14 TIMEOUT=1800 (seconds per wait)
#   COMMIT=REV names the build of BINARY in the output (default: this tree's)
#   RUNS=1 (scenarios per mode, delta and full alternating; times are medians)
#   MODES="delta full" KEEP=1 keeps the work dir (default: removed at exit;
#   with KEEP=1 the disks of each run are kept too).
# Needs: go, qemu-io, nbdcopy (libnbd-bin), python3. Every process it starts
# is stopped by PID; every address is 127.0.0.1 on an ephemeral port.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
source bench/lib.sh

SIZE=${SIZE:-4GiB}
DATA_MIB=${DATA_MIB:-256}
SEED=${SEED:-14}
TIMEOUT=${TIMEOUT:-1800}
MODES=${MODES:-delta full}
RUNS=${RUNS:-1}
KEEP=${KEEP:-0}
LIFEBOAT=${1:-${LIFEBOAT:-}}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-failback.XXXXXX")}
mkdir -p "$WORK"
WORK=$(readlink -f "$WORK")
if [[ -z ${COMMIT:-} ]]; then # set it when BINARY was built elsewhere
	COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then COMMIT+="+dirty"; fi
fi
bin=$WORK/bin
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do stop_pid "$p"; done
	if [[ $KEEP == 1 ]]; then
		echo "failback.sh: kept $WORK" >&2
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for t in qemu-io nbdcopy python3 go; do
	command -v "$t" >/dev/null || { echo "failback.sh: $t is missing (see .ci/deps)" >&2; exit 2; }
done

# bytes SIZE: SIZE in bytes (4GiB, 4Gi, 4G and 4294967296 are the same).
bytes() {
	local s=${1%B}
	case $s in
	*[0-9]) echo "$s" ;;
	*i) numfmt --from=iec-i "$s" ;;
	*) numfmt --from=iec "$s" ;;
	esac
}
size=$(bytes "$SIZE")
block=4096
dataoff=$((32 << 20))
unshipped=$((size / 200 / block * block)) # 0.5 %
# Inside the data, so that rolling it back needs the failover volume's data
# (over a hole it would be zero records only).
unshipped_off=$((dataoff + (DATA_MIB << 20) / 4))
((size % block == 0 && dataoff + (DATA_MIB << 20) <= size && unshipped <= (DATA_MIB << 20) * 3 / 4)) || {
	echo "failback.sh: SIZE=$SIZE must be a multiple of 4 KiB and hold DATA_MIB=$DATA_MIB MiB at 32 MiB," \
		"and 3/4 of DATA_MIB must hold the 0.5 % unshipped ($unshipped bytes)" >&2
	exit 2
}
siteblocks=$((size / 100 / block)) # 1 %

die() { # die MSG LOG...: the message and the tail of each log, then exit 1
	local msg=$1 f
	shift
	echo "failback.sh: $msg" >&2
	for f in "$@"; do
		[[ -f $f ]] && { echo "--- $f" >&2; tail -25 "$f" >&2; }
	done
	exit 1
}

# wait_line FILE PATTERN PID [N]: wait until FILE has N (default 1) lines
# matching PATTERN while PID runs.
wait_line() {
	local f=$1 pat=$2 pid=$3 n=${4:-1} t0=$SECONDS c
	while :; do
		c=$(grep -c -- "$pat" "$f" 2>/dev/null || true)
		((${c:-0} >= n)) && return 0
		kill -0 "$pid" 2>/dev/null || die "process $pid exited before \"$pat\"" "$f"
		((SECONDS - t0 < TIMEOUT)) || die "no \"$pat\" after ${TIMEOUT}s" "$f"
		sleep 0.1
	done
}

json() { # json EXPR: evaluate EXPR on the JSON document on stdin (as j)
	python3 -c 'import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

machine_common
echo "work: $WORK ($(df -T "$WORK" | awk 'NR == 2 {print $2 " on " $1}'))"
echo "loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"
build_lifeboat
go build -o "$bin/blockdiff" ./bench/blockdiff
lb=$bin/lifeboat
echo "binary: $("$lb" version 2>/dev/null | head -1 || echo "$lb")"
echo "volume: $size bytes; $DATA_MIB MiB random data at $dataoff; unshipped $unshipped bytes at $unshipped_off;" \
	"$siteblocks random 4 KiB blocks written at the site (seed $SEED)"
echo

# The same inputs for every run: the initial data, the unshipped write and
# the site's 4 KiB blocks (a file each) with the qemu-io script writing them.
head -c "$((DATA_MIB << 20))" /dev/urandom >"$WORK/data.bin"
mkdir -p "$WORK/blocks"
python3 - "$WORK" "$SEED" "$size" "$unshipped" "$siteblocks" <<'PY'
import random, sys
work, seed, size, unshipped, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
with open(f"{work}/unshipped.bin", "wb") as f:
    f.write(rng.randbytes(unshipped))
with open(f"{work}/site.qemu", "w") as cmds:
    for i in range(n):
        path = f"{work}/blocks/{i}"
        with open(path, "wb") as f:
            f.write(rng.randbytes(4096))
        cmds.write(f"write -q -s {path} {rng.randrange(size // 4096) * 4096} 4k\n")
    cmds.write("flush\nquit\n")
PY

# start_server DIR PORT N: the run's server (its Nth start; log DIR/server.log),
# sets srv_pid.
start_server() {
	local dir=$1 port=$2 n=$3
	"$lb" server --data-dir "$dir/site" --listen "127.0.0.1:$port" --recovery-nbd 127.0.0.1:0 >>"$dir/server.log" 2>&1 &
	srv_pid=$!
	pids+=("$srv_pid")
	wait_line "$dir/server.log" "process server listening on" "$srv_pid" "$n"
}

# run MODE I: one whole scenario with reprotect --verify (delta) or --full,
# its Ith; leaves its figures in $WORK/MODE.I.result (KEY=VALUE lines).
run() {
	local mode=$1 i=$2 dir=$WORK/$1.$2 port mport url agent_pid master_pid t0 t1 tsync st nbd img jdir admin out
	mkdir -p "$dir"
	img=$dir/disk.img jdir=$dir/journal
	port=$(free_port) mport=$(free_port)
	url=https://127.0.0.1:$port
	admin=(--server "$url" --data-dir "$dir/site")
	echo "## $mode, run $i: reprotect --$([[ $mode == delta ]] && echo verify || echo full) --force, then failback"
	"$lb" server init --data-dir "$dir/site" >/dev/null
	"$lb" certs issue --data-dir "$dir/site" --name web01 --out "$dir/certs" >/dev/null
	start_server "$dir" "$port" 1

	truncate -s "$size" "$img"
	dd if="$WORK/data.bin" of="$img" bs=1M seek="$((dataoff >> 20))" conv=notrunc,fsync status=none
	t0=$(now)
	"$bin/lifeboat-agent" agent --volume "disk=$img" --journal-dir "$jdir" --segment-age 200ms --tag-interval 1s \
		--server "$url" --cert "$dir/certs/web01.crt" --key "$dir/certs/web01.key" --ca "$dir/certs/ca.crt" \
		--nbd 127.0.0.1:0 >"$dir/agent.log" 2>&1 &
	agent_pid=$!
	pids+=("$agent_pid")
	wait_line "$dir/agent.log" "serving disk (" "$agent_pid"
	nbd=$(grep -m1 -o 'nbd://[^ ]*' "$dir/agent.log")
	while :; do
		out=$("$lb" points list --volume disk "${admin[@]}" --output json 2>/dev/null || echo '[]')
		[[ $(json 'len(j or [])' <<<"$out") -gt 0 ]] && break
		kill -0 "$agent_pid" 2>/dev/null || die "the agent exited before the first point" "$dir/agent.log"
		(($(date +%s) - ${t0%.*} < TIMEOUT)) || die "no recovery point after ${TIMEOUT}s" "$dir/agent.log" "$dir/server.log"
		sleep 0.5
	done
	echo "initial replication: $(echo "$(now) - $t0" | bc) s to the first point ($(json 'j[0]["name"]' <<<"$out"))"

	# Source writes the site never gets.
	stop_pid "$srv_pid"
	qemu-io -f raw -c "write -s $WORK/unshipped.bin $unshipped_off $unshipped" -c flush "$nbd" >"$dir/qemu-unshipped.log" ||
		die "qemu-io (unshipped writes) failed" "$dir/qemu-unshipped.log" "$dir/agent.log"
	kill -KILL "$agent_pid"
	wait "$agent_pid" 2>/dev/null || true
	start_server "$dir" "$port" 2

	# Failover, and 1 % written at the site.
	out=$("$lb" failover start disk --point latest "${admin[@]}" --output json) || die "failover start failed" "$dir/server.log"
	st=$(json 'j["url"]' <<<"$out")
	echo "failover: point seq $(json 'j["point"]["seq"]' <<<"$out") at $st"
	qemu-io -f raw "$st" <"$WORK/site.qemu" >"$dir/qemu-site.log" 2>&1 || die "qemu-io (site writes) failed" "$dir/qemu-site.log" "$dir/server.log"
	nbdcopy "$st" "$dir/failover.img"
	differ=$("$bin/blockdiff" "$img" "$dir/failover.img")
	differ=${differ%% *}
	echo "differing 4 KiB blocks, primary disk vs failover volume: $differ bytes"

	# The master target beside the primary disk.
	"$lb" certs issue --data-dir "$dir/site" --role server --name master --host 127.0.0.1 --out "$dir/mcerts" >/dev/null
	mkdir -p "$dir/master/pki"
	cp "$dir/mcerts/ca.crt" "$dir/master/pki/ca.crt"
	cp "$dir/mcerts/master.crt" "$dir/master/pki/server.crt"
	cp "$dir/mcerts/master.key" "$dir/master/pki/server.key"
	"$lb" master-target --volume "disk=$img" --journal-dir "$jdir" --data-dir "$dir/master" --listen "127.0.0.1:$mport" \
		>"$dir/master.log" 2>&1 &
	master_pid=$!
	pids+=("$master_pid")
	wait_line "$dir/master.log" "master target listening on" "$master_pid"

	# Measured: reprotect → first sync acknowledged → failback returned.
	local flag=--verify cpu_s0 cpu_m0
	[[ $mode == full ]] && flag=--full
	sync # the setup's dirty pages (nbdcopy, qemu-io) are not the failback's
	cpu_s0=$(cpu_s "$srv_pid") cpu_m0=$(cpu_s "$master_pid")
	t0=$(now)
	"$lb" reprotect disk --to "https://127.0.0.1:$mport" "$flag" --force "${admin[@]}" --output json >"$dir/reprotect.json" ||
		die "reprotect failed: $(cat "$dir/reprotect.json")" "$dir/server.log" "$dir/master.log"
	while :; do
		"$lb" test-failover list "${admin[@]}" --output json >"$dir/list.json" 2>/dev/null || true
		st=$(python3 - "$dir/list.json" "$dir/shipper.json" <<'PY'
import json, sys
try:
    l = json.load(open(sys.argv[1])) or []
except ValueError:
    print("wait"); sys.exit()
f = next((x for x in l if x["kind"] == "failover" and x["volume"]["name"] == "disk"), None)
sh = ((f or {}).get("reprotect") or {}).get("shipper")
if f and f.get("error"):
    print("error: " + f["error"])
elif sh and not sh["tracker"].get("resync") and sh["tracker"]["next_seq"] - 1 == sh["acked_seq"]:
    json.dump(sh, open(sys.argv[2], "w"))
    print("done")
else:
    print("wait")
PY
		)
		[[ $st == "done" ]] && break
		[[ $st == error* ]] && die "failover volume: $st" "$dir/server.log" "$dir/master.log"
		kill -0 "$master_pid" 2>/dev/null || die "the master target exited" "$dir/master.log"
		(($(date +%s) - ${t0%.*} < TIMEOUT)) || die "first sync not acknowledged after ${TIMEOUT}s" "$dir/server.log" "$dir/master.log"
		sleep 0.2
	done
	tsync=$(now)
	"$lb" failback disk "${admin[@]}" --output json >"$dir/failback.json" 2>"$dir/failback.err" ||
		die "failback failed: $(cat "$dir/failback.json")" "$dir/failback.err" "$dir/server.log" "$dir/master.log"
	t1=$(now)
	local cpu_s1 cpu_m1
	cpu_s1=$(cpu_s "$srv_pid") cpu_m1=$(cpu_s "$master_pid")

	# The primary disk must now be the failover volume.
	local left
	left=$("$bin/blockdiff" "$img" "$dir/failover.img")
	left=${left%% *}
	[[ $left == 0 ]] || die "after the failback $left bytes of the primary disk differ from the failover volume" "$dir/server.log" "$dir/master.log"
	stop_pid "$master_pid"
	stop_pid "$srv_pid"
	{
		echo "differ=$differ"
		echo "raw=$(json 'j["bytes_raw"]' <"$dir/shipper.json")"
		echo "wire=$(json 'j["bytes_wire"]' <"$dir/shipper.json")"
		echo "segments=$(json 'j["segments_sent"]' <"$dir/shipper.json")"
		echo "candidate=$(json 'j["reprotect"]["candidate_bytes"]' <"$dir/reprotect.json")"
		echo "rolledback=$(json 'j["reprotect"].get("rolled_back_bytes", 0)' <"$dir/reprotect.json")"
		echo "sync=$(echo "$tsync - $t0" | bc)"
		echo "time=$(echo "$t1 - $t0" | bc)"
		echo "cpu_server=$(echo "$cpu_s1 - $cpu_s0" | bc)"
		echo "cpu_master=$(echo "$cpu_m1 - $cpu_m0" | bc)"
	} >"$WORK/$mode.$i.result"
	sed 's/^/  /' "$WORK/$mode.$i.result"
	# Where the time went: the first line of each step in the server's log
	# (1 s resolution), and any warning or error of either side.
	grep -h -E 'reprotect|resync complete|failback|ERROR|WARN' "$dir/server.log" "$dir/master.log" |
		awk '{ k = $4 " " $5 " " $6 " " $7 } !seen[k]++' | cut -c1-200 | sed 's/^/  log: /' || true
	echo "  primary disk equal to the failover volume after the failback: yes"
	# Free the disk for the next run; the logs stay.
	[[ $KEEP == 1 ]] || rm -rf "$img" "$dir/failover.img" "$jdir" "$dir/site/replicas"
	echo
}

for i in $(seq "$RUNS"); do
	for m in $MODES; do run "$m" "$i"; done
done

[[ " $MODES " == *" delta "* && " $MODES " == *" full "* ]] || exit 0
# d[KEY], f[KEY]: the median over the runs of each mode; d[KEY_runs] the values.
declare -A d f
summarize() { # summarize MODE ARRAY
	local -n a=$2
	local k
	while IFS='=' read -r k _; do
		a[${k}_runs]=$(for i in $(seq "$RUNS"); do sed -n "s/^$k=//p" "$WORK/$1.$i.result"; done | xargs)
		# shellcheck disable=SC2004 # an associative array: $k is a key
		a[$k]=$(tr ' ' '\n' <<<"${a[${k}_runs]}" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
	done <"$WORK/$1.1.result"
}
summarize delta d
summarize full f
for k in differ raw candidate; do
	[[ ${d[${k}_runs]} == $(for _ in $(seq "$RUNS"); do echo "${d[$k]}"; done | xargs) ]] ||
		echo "failback.sh: the delta runs differ in $k: ${d[${k}_runs]}" >&2
done
[[ ${d[differ]} == "${f[differ]}" ]] || echo "failback.sh: the delta and full runs differ in their differing bytes (${d[differ]}, ${f[differ]})" >&2
mib() { echo "scale=1; $1 / 1048576" | bc; }
ratio() { echo "scale=4; $1 / $2" | bc | sed 's/^\./0./'; }
sec() { printf '%.2f' "$1"; }
runs() { local v out=(); for v in $1; do out+=("$(sec "$v")"); done; echo "${out[*]}"; }
echo "## failback of a $SIZE volume ($DATA_MIB MiB of data), $(nproc) cores, $RUNS run(s) of each; medians"
echo "| | delta (--verify) | full (--full) |"
echo "| --- | ---: | ---: |"
echo "| differing bytes (4 KiB blocks) | ${d[differ]} ($(mib "${d[differ]}") MiB) | ${f[differ]} ($(mib "${f[differ]}") MiB) |"
echo "| candidate bytes | ${d[candidate]} ($(mib "${d[candidate]}") MiB) | ${f[candidate]} ($(mib "${f[candidate]}") MiB) |"
echo "| rolled back (unshipped at the source) | ${d[rolledback]} | ${f[rolledback]} |"
echo "| bytes_raw (segment bytes sent) | ${d[raw]} ($(mib "${d[raw]}") MiB) | ${f[raw]} ($(mib "${f[raw]}") MiB) |"
echo "| bytes_wire (after zstd) | ${d[wire]} ($(mib "${d[wire]}") MiB) | ${f[wire]} ($(mib "${f[wire]}") MiB) |"
echo "| segments sent | ${d[segments]} | ${f[segments]} |"
echo "| reprotect → first sync acknowledged, s | $(sec "${d[sync]}") ($(runs "${d[sync_runs]}")) | $(sec "${f[sync]}") ($(runs "${f[sync_runs]}")) |"
echo "| reprotect → failback returned, s | **$(sec "${d[time]}")** ($(runs "${d[time_runs]}")) | **$(sec "${f[time]}")** ($(runs "${f[time_runs]}")) |"
echo "| CPU s, server / master target | ${d[cpu_server]} / ${d[cpu_master]} | ${f[cpu_server]} / ${f[cpu_master]} |"
rb=$(ratio "${d[raw]}" "${d[differ]}") rw=$(ratio "${d[wire]}" "${d[differ]}") rt=$(ratio "${d[time]}" "${f[time]}")
met() { [[ $(echo "$1 <= $2" | bc) == 1 ]] && echo met || echo "not met"; }
echo
echo "delta bytes_raw / differing bytes: $rb (goal ≤ 1.1: $(met "$rb" 1.1)); bytes_wire / differing: $rw"
echo "delta time / full copy time: $rt (goal ≤ 0.05: $(met "$rt" 0.05))"
echo "full bytes_raw / volume size: $(ratio "${f[raw]}" "$size"); machine: $(nproc) cores"
