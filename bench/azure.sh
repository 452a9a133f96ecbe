#!/usr/bin/env bash
# bench/azure.sh — the Azure page blob target benchmarks (BENCHMARKS.md,
# "Azure page blob target (issue 5)"):
#
#   bench/azure.sh init     initial replication of a SIZE_MIB volume (50 % zero)
#                           into the target on Azurite (bench/azureinit: lifeboat,
#                           plain azblob loop, encrypted lifeboat, and whatever
#                           else KINDS names), RUNS rounds per Azurite persistence
#                           mode and per PARALLEL; each round on a new Azurite with
#                           a new data directory, the kinds in a different order
#                           each round; the first round of each series verifies
#                           every replica (sha256 of the blob or of the point read
#                           back)
#   bench/azure.sh gotest   go test -bench 'Plan|XTS|Encrypt|Decrypt' -benchmem
#                           ./targets/azure, COUNT times: Put Page calls and bytes
#                           per GiB of churn, XTS MB/s
#   bench/azure.sh all      both
#
# Environment (defaults in brackets):
#   OUT=DIR          raw results, kept [a new dir under $TMPDIR]
#   COMMIT=LABEL     what the results are of [git rev-parse --short HEAD, +dirty]
#   init:   RUNS=5 PARALLEL="8" (e.g. "8 4 16") PERSIST="disk memory"
#           KINDS=lifeboat,loop,xts (also: lifeboatz, xtsz, loopbatch, looplease;
#           see bench/azureinit)
#           SIZE_MIB=1024 SEED=5 SEGMENT_MIB=32 WARMUP_MIB=512 (uploaded untimed
#           to each new Azurite before the timed runs: with 64 MiB the first
#           run of a round was still 3-8 % slower than the others)
#           DELAY=0 (e.g. 5ms: every byte between the clients and Azurite
#           goes through azureinit's proxy, which holds it that long in each
#           direction, so round trips take twice that; every kind uses it)
#           PROFILE=0 (1: one more lifeboat run per series under -cpuprofile,
#           not in the medians; go tool pprof -top of it)
#   gotest: COUNT=5 BENCHTIME=1s
#
# Azurite (3.35.0) is found as in targets/azure/azuritetest: $LIFEBOAT_AZURITE,
# azurite-blob on PATH, or ~/.cache/lifeboat/azurite-3.35.0. It listens on a
# free 127.0.0.1 port; its data directory is a temporary directory removed with
# it; it is stopped by PID (also on exit). "disk" is Azurite's default
# persistence (extents as files under --location, metadata in LokiJS),
# "memory" is --inMemoryPersistence (which refuses --location).
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")/.."
if [[ ! -f go.mod || ! -d targets/azure || ! -d bench ]]; then
	echo "azure.sh: cannot find the lifeboat repository" >&2
	exit 2
fi

what=${1:-}
case $what in
init | gotest | all) ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
	;;
esac

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-azurebench.XXXXXX")}
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-azurite.XXXXXX")
if [[ -z ${COMMIT:-} ]]; then
	COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then COMMIT+="+dirty"; fi
fi

apid=""
cleanup() {
	[[ -n $apid ]] && stop_pid "$apid"
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

source bench/lib.sh # stop_pid, free_port (the script runs from the repository root)

find_azurite() {
	local p=${LIFEBOAT_AZURITE:-}
	if [[ -n $p ]]; then
		[[ $(basename "$p") == azurite-blob ]] || p=$(dirname "$p")/azurite-blob
		[[ -x $p ]] && { echo "$p"; return; }
	fi
	command -v azurite-blob && return
	p=${XDG_CACHE_HOME:-$HOME/.cache}/lifeboat/azurite-3.35.0/node_modules/.bin/azurite-blob
	[[ -x $p ]] && { echo "$p"; return; }
	echo "azure.sh: azurite-blob not found (npm install --prefix ~/.cache/lifeboat/azurite-3.35.0 azurite@3.35.0)" >&2
	return 1
}

machine() {
	{
		machine_common
		echo "tmpdir: ${TMPDIR:-/tmp} ($(df -T "${TMPDIR:-/tmp}" | awk 'NR == 2 {print $2 " on " $1}'))"
		echo "loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"
	} | tee "$OUT/machine-$1.txt"
	echo "raw results: $OUT"
	echo
}

# start_azurite MODE: a new Azurite on a free port with a new data directory;
# sets apid and aurl.
start_azurite() {
	local mode=$1 dir store=() try
	for try in 1 2 3; do
		dir=$(mktemp -d "$WORK/data.XXXXXX")
		# --inMemoryPersistence refuses --location; it runs in dir anyway.
		store=(--location "$dir")
		[[ $mode == memory ]] && store=(--inMemoryPersistence)
		local port
		port=$(free_port)
		aurl=http://127.0.0.1:$port/devstoreaccount1
		(cd "$dir" && exec "$azurite" --blobHost 127.0.0.1 --blobPort "$port" "${store[@]}" \
			--skipApiVersionCheck --loose --disableTelemetry --silent >>"$WORK/azurite.log" 2>&1) &
		apid=$!
		for _ in $(seq 600); do
			# Any HTTP answer (403 without credentials) means it serves.
			if curl -s -o /dev/null --max-time 2 "$aurl?comp=list"; then
				adir=$dir
				return 0
			fi
			kill -0 "$apid" 2>/dev/null || break
			sleep 0.1
		done
		stop_pid "$apid"
		apid=""
		rm -rf "$dir"
	done
	echo "azure.sh: azurite did not start: $(tail -5 "$WORK/azurite.log")" >&2
	return 1
}

stop_azurite() {
	stop_pid "$apid"
	apid=""
	rm -rf "$adir"
}

# order LIST R: the comma-separated LIST for round R (from 1): rotated left
# by (R-1)/2 and reversed in even rounds (a b c, c b a, b c a, a c b, ...),
# so that each kind runs in every position and after different kinds.
order() {
	local -a k r
	IFS=, read -ra k <<<"$1"
	local n=$((($2 - 1) / 2 % ${#k[@]})) i
	r=("${k[@]:n}" "${k[@]:0:n}")
	if (($2 % 2 == 0)); then
		for ((i = ${#r[@]} - 1; i >= 0; i--)); do k[${#r[@]} - 1 - i]=${r[i]}; done
		r=("${k[@]}")
	fi
	(IFS=,; echo "${r[*]}")
}

bench_init() {
	local runs=${RUNS:-5} pars=${PARALLEL:-8} modes=${PERSIST:-disk memory} kinds=${KINDS:-lifeboat,loop,xts}
	local size=${SIZE_MIB:-1024} seed=${SEED:-5} seg=$((${SEGMENT_MIB:-32} << 20)) mode p r
	machine init
	azurite=$(find_azurite)
	echo "azurite: $azurite $("$azurite" --version 2>/dev/null), node $(node --version)" | tee -a "$OUT/machine-init.txt"
	echo "delay: ${DELAY:-0} each way (azureinit -delay)" | tee -a "$OUT/machine-init.txt"
	mkdir -p "$OUT/bin"
	go build -o "$OUT/bin/azureinit" ./bench/azureinit
	: >"$OUT/init.txt"
	for mode in $modes; do
		for p in $pars; do
			for r in $(seq "$runs"); do
				start_azurite "$mode"
				local verify=()
				[[ $r == 1 ]] && verify=(-verify)
				echo "== $mode P=$p round $r/$runs: $(order "$kinds" "$r") (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/init.txt"
				"$OUT/bin/azureinit" -endpoint "$aurl" -azurite-pid "$apid" -parallel "$p" -label "$mode" \
					-size-mib "$size" -seed "$seed" -segment "$seg" -round "$r" -warmup-mib "${WARMUP_MIB:-512}" -delay "${DELAY:-0}" "${verify[@]}" \
					-kinds "$(order "$kinds" "$r")" | tee -a "$OUT/init.txt"
				stop_azurite
			done
			if [[ ${PROFILE:-0} == 1 ]]; then
				start_azurite "$mode"
				"$OUT/bin/azureinit" -endpoint "$aurl" -azurite-pid "$apid" -parallel "$p" -label "$mode" \
					-size-mib "$size" -seed "$seed" -segment "$seg" -warmup-mib "${WARMUP_MIB:-512}" -delay "${DELAY:-0}" -kinds lifeboat \
					-cpuprofile "$OUT/cpu-$mode-P$p" | sed 's/^Benchmark/profiled: Benchmark/' | tee -a "$OUT/profile.txt"
				stop_azurite
				go tool pprof -top -nodecount 40 "$OUT/bin/azureinit" "$OUT/cpu-$mode-P$p.lifeboat" \
					>"$OUT/pprof-$mode-P$p.txt" 2>&1 || true
				go tool pprof -top -cum -nodecount 40 "$OUT/bin/azureinit" "$OUT/cpu-$mode-P$p.lifeboat" \
					>"$OUT/pprof-cum-$mode-P$p.txt" 2>&1 || true
			fi
		done
	done
	echo
	grep -c '^# .*verified' "$OUT/init.txt" | sed 's/^/replicas verified (sha256 equal to the source): /'
	awk -f bench/medians.awk "$OUT/init.txt" | tee "$OUT/medians-init.txt"
	echo
	python3 - "$OUT/init.txt" <<'PY' | tee "$OUT/summary-init.txt"
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)  # (kind, P, mode) -> [metrics]
order = []
for line in open(sys.argv[1]):
    if not line.startswith("BenchmarkAzureInit/"):
        continue
    f = line.split()
    _, kind, p, mode = (f[0].split("/") + [""])[:4]
    m = {f[i + 1]: float(f[i]) for i in range(2, len(f) - 1, 2)}
    key = (kind, p, mode)
    if key not in runs:
        order.append(key)
    runs[key].append(m)
med = lambda rs, k: statistics.median(r[k] for r in rs)
print("| kind | P | Azurite | runs | MB/s median | MB/s min–max | s median | client CPU s | Azurite CPU s | Azurite cores |")
print("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
for key in order:
    rs = runs[key]
    mbs = [r["MB/s"] for r in rs]
    print(f"| {key[0]} | {key[1][2:]} | {key[2]} | {len(rs)} | {med(rs, 'MB/s'):.1f} | {min(mbs):.1f}–{max(mbs):.1f} | {med(rs, 's'):.3f} | "
          f"{med(rs, 'client-cpu-s'):.2f} | {med(rs, 'azurite-cpu-s'):.2f} | {med(rs, 'azurite-cores'):.2f} |")
print()
for key in order:
    rs = runs[key]
    if "apply-s" in rs[0]:
        print(f"{key[0]} {key[1]} {key[2]}: phases (median s) open {med(rs, 'open-s'):.3f} apply {med(rs, 'apply-s'):.3f} "
              f"commit {med(rs, 'commit-s'):.3f} point {med(rs, 'point-s'):.3f}; {rs[0]['applies']:.0f} applies, "
              f"{rs[0]['calls']:.0f} page blob calls, at most {rs[0]['max-calls/batch']:.0f} per apply")
print()
for kind, p, mode in order:
    if kind == "loop":
        continue
    base = runs.get(("loop", p, mode))
    if not base:
        continue
    rs = runs[(kind, p, mode)]
    r = med(rs, "MB/s") / med(base, "MB/s")
    paired = [a["MB/s"] / b["MB/s"] for a, b in zip(rs, base)]
    line = f"{kind}/loop {p} {mode}: ratio of medians {r:.3f}, per-round ratios median {statistics.median(paired):.3f} (min {min(paired):.3f}, max {max(paired):.3f})"
    if kind == "lifeboat":
        line += f" -> goal >= 0.85: {'MET' if r >= 0.85 else 'MISSED'}"
    print(line)
PY
	echo "loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine-init.txt"
	echo "raw results: $OUT"
}

bench_gotest() {
	local count=${COUNT:-5} bt=${BENCHTIME:-1s}
	machine gotest
	echo "== go test -run '^\$' -bench 'Plan|XTS|Encrypt|Decrypt' -benchmem -count $count -benchtime $bt ./targets/azure/"
	cp "$OUT/machine-gotest.txt" "$OUT/gotest.txt"
	go test -run '^$' -bench 'Plan|XTS|Encrypt|Decrypt' -benchmem -count "$count" -benchtime "$bt" ./targets/azure/ | tee -a "$OUT/gotest.txt"
	echo
	awk -f bench/medians.awk "$OUT/gotest.txt" | tee "$OUT/medians-gotest.txt"
	echo "loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine-gotest.txt"
	echo "raw results: $OUT"
}

case $what in
init) bench_init ;;
gotest) bench_gotest ;;
all)
	bench_gotest
	bench_init
	;;
esac
