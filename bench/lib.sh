# Shell functions the bench scripts share (they source bench/lib.sh from the repository root).
# The site, server and agent helpers below use the caller's globals: WORK
# (scratch dir), OUT (results), bin (where build_lifeboat puts the binaries),
# pids (every process started, for the caller's trap to stop), DROP_CACHES;
# and they set globals for the caller (srv_pid, srv_url, agent_pid, nbd_uri).
# shellcheck shell=bash disable=SC2034,SC2154

# stop_pid PID: SIGTERM, wait up to 20 s, then SIGKILL.
stop_pid() {
	local p=$1
	kill -0 "$p" 2>/dev/null || return 0
	kill -TERM "$p" 2>/dev/null || true
	for _ in $(seq 200); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
}

# free_port: a free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# out_work NAME: OUT (results, kept; default a new dir
# $TMPDIR/lifeboat-NAME.XXXXXX), WORK (scratch, default $OUT/work), both
# made and absolute, and COMMIT (default the short HEAD, +dirty).
out_work() {
	OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-$1.XXXXXX")}
	mkdir -p "$OUT"
	OUT=$(readlink -f "$OUT")
	WORK=${WORK:-$OUT/work}
	mkdir -p "$WORK"
	WORK=$(readlink -f "$WORK")
	if [[ -z ${COMMIT:-} ]]; then
		COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
		if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then COMMIT+="+dirty"; fi
	fi
}

# machine_common: the lines of a results' machine record every script
# prints (COMMIT set by the script).
machine_common() {
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "commit: $COMMIT"
	echo "nproc: $(nproc)"
	echo "cpumodel: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	echo "kernel: $(uname -r)"
	echo "goversion: $(go env GOVERSION)"
	echo "memtotal: $(awk '/^MemTotal/ {print $2 " " $3}' /proc/meminfo)"
}

now() { date +%s.%N; }
# disk_io DIR: "READ_MIB WRITTEN_MIB" so far on the block device under DIR
# (/proc/diskstats; the whole device, whoever did the I/O).
disk_io() {
	local dev
	dev=$(basename "$(df --output=source "$1" | tail -1)")
	awk -v d="$dev" '$3 == d { printf "%.0f %.0f\n", $6 * 512 / 1048576, $10 * 512 / 1048576 }' /proc/diskstats
}
# cpu_s PID: user+system CPU seconds of a process so far (/proc/PID/stat,
# fields 14 and 15 in clock ticks).
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat"; }
drop_caches() {
	sync
	if [[ $DROP_CACHES == 1 ]]; then
		echo 3 >/proc/sys/vm/drop_caches
	fi
}

machine() {
	{
		machine_common
		echo "workdir: $WORK ($(df -T "$WORK" | awk 'NR == 2 {print $2 " on " $1}'))"
		echo "tmpdir: ${TMPDIR:-/tmp} ($(df -T "${TMPDIR:-/tmp}" | awk 'NR == 2 {print $2 " on " $1}'))"
		echo "dropcaches: $DROP_CACHES"
		echo "loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"
	} | tee "$OUT/machine-$1.txt"
	echo "raw results: $OUT"
	echo
}

# build_lifeboat: $bin/lifeboat, built from this tree, or a copy of
# $LIFEBOAT when it is set (a binary under test), and its copy
# $bin/lifeboat-agent: the agent runs under that name, so that profiles and
# ps tell it from the server.
build_lifeboat() {
	mkdir -p "$bin"
	if [[ -n ${LIFEBOAT:-} ]]; then
		cp "$LIFEBOAT" "$bin/lifeboat"
	else
		go build -o "$bin/lifeboat" ./cmd/lifeboat
	fi
	cp "$bin/lifeboat" "$bin/lifeboat-agent"
}

# The site: one CA for every server started here, an agent and an admin
# identity. Each server gets a copy in its own data dir.
site() {
	[[ -d $WORK/site ]] && return 0
	"$bin/lifeboat" server init --data-dir "$WORK/site" >/dev/null
	"$bin/lifeboat" certs issue --data-dir "$WORK/site" --name bench --out "$WORK/certs" >/dev/null
}

# start_server DIR: a server with its data dir DIR/srv and a file target
# DIR/replicas, no recovery-volume NBD port (its default is a fixed port
# another server may hold); sets srv_pid and srv_url. Logs: DIR/srv.log.
start_server() {
	local dir=$1 port
	site
	mkdir -p "$dir/srv"
	cp -a "$WORK/site/pki" "$dir/srv/"
	port=$(free_port)
	"$bin/lifeboat" server --data-dir "$dir/srv" --listen "127.0.0.1:$port" --target "file://$dir/replicas" --recovery-nbd "" \
		>"$dir/srv.out" 2>"$dir/srv.log" &
	srv_pid=$!
	pids+=("$srv_pid")
	srv_url=https://127.0.0.1:$port
	for _ in $(seq 100); do
		grep -q "listening" "$dir/srv.out" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "${0##*/}: server did not start:" >&2
	cat "$dir/srv.out" "$dir/srv.log" >&2
	return 1
}

# start_agent DIR VOLPATH [ARGS...]: an agent replicating VOLPATH as v1 to
# srv_url (journaling only when srv_url is empty), NBD on a free port; sets
# agent_pid, nbd_uri and agent_t0 (the Unix time just before the agent
# process was started). Logs: DIR/agent.log.
start_agent() {
	local dir=$1 vol=$2 port repl=()
	shift 2
	port=$(free_port)
	if [[ -n $srv_url ]]; then
		repl=(--server "$srv_url" --cert "$WORK/certs/bench.crt" --key "$WORK/certs/bench.key" --ca "$WORK/certs/ca.crt")
	fi
	agent_t0=$(now)
	"$bin/lifeboat-agent" agent --volume "v1=$vol" --journal-dir "$dir/journal" --nbd "127.0.0.1:$port" \
		"${repl[@]}" "$@" >"$dir/agent.out" 2>"$dir/agent.log" &
	agent_pid=$!
	pids+=("$agent_pid")
	nbd_uri=nbd://127.0.0.1:$port/v1
}

points() { # points DIR: the volume's points as JSON
	"$bin/lifeboat" points list --server "$srv_url" --data-dir "$WORK/site" --volume v1 --output json
}

# wait_resync DIR TIMEOUT: wait for the "resync complete" point; prints the
# Unix time it was created (tag time + the server's lag) and, on stderr's
# behalf, writes DIR/resync-started (from the agent's status, when seen).
wait_resync() {
	local dir=$1 timeout=$2 t0 line
	t0=$(date +%s)
	# Light polling (grep and sleep only): the machine has two cores and
	# this loop shares them with what it measures.
	while :; do
		if [[ ! -s $dir/resync-started && -f $dir/journal/v1/status.json ]]; then
			sed -n 's/^ *"started": "\([^"]*\)".*/\1/p' "$dir/journal/v1/status.json" >"$dir/resync-started" 2>/dev/null || true
		fi
		line=$(grep -m1 'recovery point created.*name="resync complete' "$dir/srv.log" || true)
		[[ -n $line ]] && break
		if (($(date +%s) - t0 > timeout)); then
			echo "${0##*/}: no resync-complete point after ${timeout}s" >&2
			tail -5 "$dir/agent.log" "$dir/srv.log" >&2
			return 1
		fi
		if ! kill -0 "$agent_pid" 2>/dev/null; then
			echo "${0##*/}: the agent exited" >&2
			tail -20 "$dir/agent.log" >&2
			return 1
		fi
		sleep 0.1
	done
	points >"$dir/points.json"
	python3 - "$dir/points.json" "$line" <<'PY'
import json, re, subprocess, sys
seq = int(re.search(r"\bseq=(\d+)", sys.argv[2]).group(1))
lag = re.search(r"\blag=(\S+)", sys.argv[2]).group(1)
p = next(p for p in json.load(open(sys.argv[1])) if p["seq"] == seq)
tag = subprocess.run(["date", "-d", p["time"], "+%s.%N"], capture_output=True, text=True, check=True).stdout.strip()
m = re.fullmatch(r"([0-9.]+)(ns|us|µs|ms|s)", lag)
if m:
    secs = float(m.group(1)) * {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1}[m.group(2)]
else:  # e.g. 1m2.5s
    mm = re.fullmatch(r"(\d+)m([0-9.]+)s", lag)
    secs = int(mm.group(1)) * 60 + float(mm.group(2))
print(f"{float(tag) + secs:.6f}")
PY
}
