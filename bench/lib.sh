# Shell functions the bench scripts share (they source bench/lib.sh from the repository root).

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
