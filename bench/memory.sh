#!/usr/bin/env bash
# bench/memory.sh — peak memory of an agent with many busy volumes and of the
# process server it replicates to (issue 13, item 5).
#
#   a `lifeboat server` (file target) and a `lifeboat agent` with VOLUMES
#   volumes of VOL_MIB each, replicated to it; then one fio per volume, all at
#   once (sequential write, BS blocks, IODEPTH, WRITE_MIB each, through NBD);
#   then it waits until every volume's journal is shipped (or SHIP_TIMEOUT).
#   Peak RSS is VmHWM of /proc/PID/status, read before each process stops.
#
# Usage:   bench/memory.sh BINARY
#   BINARY is the lifeboat binary to measure (go build -o ... ./cmd/lifeboat).
# Environment (defaults in brackets): VOLUMES [8], VOL_MIB [1024],
#   WRITE_MIB [256], BS [1M], IODEPTH [4], SHIP_TIMEOUT [120] seconds,
#   AGENT_ARGS [""] extra agent flags, AGENT_ENV [""] VAR=VALUE words for the
#   agent only (e.g. LIFEBOAT_PPROF=127.0.0.1:6060 with a -tags pprof build), WORK [a new dir under $TMPDIR].
# Output: one line per process, for scripts:
#   agent: peak_rss_mib=N idle_rss_mib=N per_busy_volume_mib=N volumes=N
#   server: peak_rss_mib=N
# Needs fio (nbd engine), nbdinfo, python3. Everything listens on 127.0.0.1;
# every process started is stopped by PID. The machine is shared: RSS does
# not depend much on load, but timing (and so the overlap of volumes) does.
set -euo pipefail

BIN=${1:-}
if [[ -z $BIN || ! -x $BIN ]]; then
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
fi
BIN=$(readlink -f "$BIN")
cd "$(dirname "$(readlink -f "$0")")/.."
source bench/lib.sh # stop_pid, free_port

VOLUMES=${VOLUMES:-8}
VOL_MIB=${VOL_MIB:-1024}
WRITE_MIB=${WRITE_MIB:-256}
BS=${BS:-1M}
IODEPTH=${IODEPTH:-4}
SHIP_TIMEOUT=${SHIP_TIMEOUT:-120}
read -r -a extra <<<"${AGENT_ARGS:-}"
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-membench.XXXXXX")}
mkdir -p "$WORK"

for t in fio nbdinfo python3; do
	command -v "$t" >/dev/null || { echo "memory.sh: $t is missing (see .ci/run for the packages)" >&2; exit 2; }
done

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do stop_pid "$p"; done
	rm -rf "$WORK"
}
trap cleanup EXIT

rss() { awk -v k="$2:" '$1 == k { printf "%d\n", $2 / 1024 }' "/proc/$1/status"; } # rss PID VmHWM|VmRSS -> MiB

# The site and the agent's certificate.
"$BIN" server init --data-dir "$WORK/srv" >/dev/null
"$BIN" certs issue --data-dir "$WORK/srv" --name bench --out "$WORK/certs" >/dev/null
sport=$(free_port)
"$BIN" server --data-dir "$WORK/srv" --listen "127.0.0.1:$sport" --target "file://$WORK/replicas" --recovery-nbd "" \
	>"$WORK/srv.out" 2>"$WORK/srv.log" &
srv_pid=$!
pids+=("$srv_pid")
for _ in $(seq 100); do grep -q listening "$WORK/srv.out" 2>/dev/null && break; sleep 0.1; done

nport=$(free_port)
vols=()
for i in $(seq "$VOLUMES"); do vols+=(--volume "v$i=$WORK/v$i.img,size=${VOL_MIB}MiB"); done
env ${AGENT_ENV:-} "$BIN" agent "${vols[@]}" --journal-dir "$WORK/journal" --nbd "127.0.0.1:$nport" \
	--server "https://127.0.0.1:$sport" --cert "$WORK/certs/bench.crt" --key "$WORK/certs/bench.key" \
	--ca "$WORK/certs/ca.crt" "${extra[@]}" >"$WORK/agent.out" 2>"$WORK/agent.log" &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$nport/v$VOLUMES" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2 # the initial replication of the empty volumes
idle=$(rss "$agent_pid" VmRSS)

fios=()
for i in $(seq "$VOLUMES"); do
	fio --name="v$i" --ioengine=nbd --uri="nbd://127.0.0.1:$nport/v$i" --rw=write --bs="$BS" \
		--iodepth="$IODEPTH" --size="${WRITE_MIB}M" --output="$WORK/fio$i.txt" >/dev/null &
	fios+=("$!")
done
for p in "${fios[@]}"; do wait "$p"; done

# Wait until every volume's journal is shipped: only the open segment left.
t0=$(date +%s)
while (($(date +%s) - t0 < SHIP_TIMEOUT)); do
	left=$(find "$WORK/journal" -name '*.hrl' | wc -l)
	((left <= VOLUMES)) && break
	sleep 1
done
shipped=yes
((left <= VOLUMES)) || shipped="no ($left segments left after ${SHIP_TIMEOUT}s)"

a=$(rss "$agent_pid" VmHWM)
s=$(rss "$srv_pid" VmHWM)
echo "# $VOLUMES volumes of $VOL_MIB MiB, fio write bs=$BS iodepth=$IODEPTH ${WRITE_MIB} MiB each, at once; shipped: $shipped"
echo "agent: peak_rss_mib=$a idle_rss_mib=$idle per_busy_volume_mib=$(((a - idle) / VOLUMES)) volumes=$VOLUMES"
echo "server: peak_rss_mib=$s"
