#!/usr/bin/env bash
# bench/replication.sh — the replication pipeline benchmarks (BENCHMARKS.md,
# "Replication pipeline (issue 4)"). Each part runs its own comparison in
# the same invocation:
#
#   bench/replication.sh apply     process server throughput: go test Receive/Apply
#                                  (COUNT runs, benchstat) and the real server end to
#                                  end (bench/ingest, RUNS runs per data kind, into a
#                                  fresh replica and overwriting a filled one)
#   bench/replication.sh initial   initial replication of a SIZE_MIB image (50 % holes,
#                                  25 % written zeros, 25 % random) beside
#                                  cp --sparse=always + sync of the same image, RUNS each
#   bench/replication.sh rpo       recovery-point lag: fio randwrite at RATE through NBD
#                                  for RUNTIME s, 1 s tags (bench/rpolag), RUNS runs,
#                                  then each of EXTRA_RATES once
#   bench/replication.sh all       the three in turn
#
# Run it from anywhere in the repository (or in an exported copy of it).
# Environment (defaults in brackets):
#   OUT=DIR          raw results, kept [a new dir under $TMPDIR]
#   WORK=DIR         scratch files, removed at exit [$OUT/work]; its file
#                    system is the one measured (image, journal, spool, replica)
#   COMMIT=LABEL     what the results are of [git rev-parse --short HEAD, +dirty]
#   DROP_CACHES=1    sync and drop the page cache before each timed copy (root)
#   PROFILE=0        apply: 1 also writes CPU profiles (go test -cpuprofile,
#                    and perf record of the server process when perf exists)
#   LIFEBOAT=PATH    use this lifeboat binary instead of building one
#   apply:   COUNT=5 BENCHTIME=1s RUNS=5 SEGMENTS=32 (x 32 MiB per run)
#            GOTEST=1 (0: skip the go test part) KINDS="incompressible typical"
#            MODES="fresh overwrite" (the end-to-end runs to do)
#   initial: RUNS=3 SIZE_MIB=4096 SEED=4
#   rpo:     RUNS=3 RATE=50m RUNTIME=60 SIZE_MIB=2048 BS=64k IODEPTH=8
#            TAG_INTERVAL=1s EXTRA_RATES="" (e.g. "100m 200m 0"; 0 = unthrottled)
#
# Needs: go, python3, fio with the nbd engine (rpo), sha256sum, GNU cp/date.
# Every process it starts is stopped by PID; ports are ephemeral, 127.0.0.1.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")/.."
if [[ ! -f go.mod || ! -d pipeline || ! -d bench ]]; then
	echo "replication.sh: cannot find the lifeboat repository" >&2
	exit 2
fi

what=${1:-}
case $what in
apply | initial | rpo | all) ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
	;;
esac

source bench/lib.sh # stop_pid, free_port, out_work, build_lifeboat, start_server, start_agent, wait_resync

out_work replbench
DROP_CACHES=${DROP_CACHES:-1}
PROFILE=${PROFILE:-0}

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do stop_pid "$p"; done
	if [[ ${KEEP_WORK:-0} != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

bin=$WORK/bin
build() {
	build_lifeboat
	go build -o "$bin/ingest" ./bench/ingest
	go build -o "$bin/rpolag" ./bench/rpolag
}

benchstat_cmd() {
	local v
	for v in latest v0.0.0-20260908200009-22c9c6c9d4da; do
		if go run "golang.org/x/perf/cmd/benchstat@$v" -h >/dev/null 2>&1; then
			echo "golang.org/x/perf/cmd/benchstat@$v"
			return 0
		fi
	done
	return 1
}

# medians FILE: "benchmark<TAB>unit<TAB>median<TAB>n" for every metric.
medians() { awk -f bench/medians.awk "$@"; }

# ---------------------------------------------------------------------------
# apply: the process server's throughput.
bench_apply() {
	set -- apply
	local count=${COUNT:-5} benchtime=${BENCHTIME:-1s} runs=${RUNS:-5} segments=${SEGMENTS:-32} kind bs dir
	local kinds=${KINDS:-incompressible typical} modes=${MODES:-fresh overwrite}
	machine apply
	build
	: >"$OUT/pipeline-medians.tsv"
	if [[ ${GOTEST:-1} == 1 ]]; then bench_apply_gotest "$count" "$benchtime"; fi
	bench_apply_ingest "$runs" "$segments" "$kinds" "$modes"
	bench_apply_summary
}

# bench_apply_gotest COUNT BENCHTIME: go test Receive/Apply, benchstat, medians.
bench_apply_gotest() {
	local count=$1 benchtime=$2 bs
	echo "== go test -run '^\$' -bench 'Receive|Apply' -benchmem -count $count -benchtime $benchtime ./pipeline"
	cp "$OUT/machine-apply.txt" "$OUT/pipeline.txt"
	go test -run '^$' -bench 'Receive|Apply' -benchmem -count "$count" -benchtime "$benchtime" ./pipeline | tee -a "$OUT/pipeline.txt"
	echo
	if bs=$(benchstat_cmd); then
		echo "== benchstat ($bs) -confidence 0.9"
		go run "$bs" -confidence 0.9 "$OUT/pipeline.txt" | tee "$OUT/pipeline-benchstat.txt"
		echo
	else
		echo "== benchstat unavailable; medians computed with awk"
	fi
	medians "$OUT/pipeline.txt" >"$OUT/pipeline-medians.tsv"
}

# bench_apply_ingest RUNS SEGMENTS KINDS MODES: bench/ingest into a real server.
bench_apply_ingest() {
	local runs=$1 segments=$2 kinds=$3 modes=$4 kind mode modeflag dir
	echo "== end to end: bench/ingest into a running lifeboat server, $segments x 32 MiB per run, $runs runs per kind and mode"
	: >"$OUT/ingest.txt"
	for kind in $kinds; do
		dir=$WORK/ingest-$kind
		mkdir -p "$dir"
		start_server "$dir"
		# fresh: each run to a new volume (a sparse replica, as in an initial
		# replication); overwrite: every run rewrites one volume filled first.
		for mode in $modes; do
			modeflag=()
			[[ $mode == overwrite ]] && modeflag=(--overwrite)
			"$bin/ingest" --server "$srv_url" --cert "$WORK/certs/bench.crt" --key "$WORK/certs/bench.key" \
				--ca "$WORK/certs/ca.crt" --kind "$kind" --segments "$segments" --runs "$runs" --tmp "$dir" \
				--server-pid "$srv_pid" "${modeflag[@]}" | tee -a "$OUT/ingest.txt"
			if [[ $PROFILE == 1 ]] && command -v perf >/dev/null; then
				# One more run with the server under perf (not in the medians).
				perf record -F 999 -g -p "$srv_pid" -o "$OUT/perf-server-$kind-$mode.data" 2>/dev/null &
				local perf_pid=$!
				pids+=("$perf_pid")
				"$bin/ingest" --server "$srv_url" --cert "$WORK/certs/bench.crt" --key "$WORK/certs/bench.key" \
					--ca "$WORK/certs/ca.crt" --kind "$kind" --segments "$segments" --runs 1 --tmp "$dir" \
					"${modeflag[@]}" | sed 's/^/perf /'
				kill -INT "$perf_pid"
				wait "$perf_pid" 2>/dev/null || true
				{
					echo "# self time, by symbol"
					perf report -i "$OUT/perf-server-$kind-$mode.data" --no-children --sort symbol -g none --stdio 2>/dev/null |
						grep -v '^#' | grep -v '^$' | head -30
					echo "# with callees, by symbol"
					perf report -i "$OUT/perf-server-$kind-$mode.data" --children --sort symbol -g none --stdio 2>/dev/null |
						grep -v '^#' | grep -v '^$' | head -150
				} >"$OUT/perf-server-$kind-$mode.txt" || true
			fi
		done
		cp "$dir/srv.log" "$OUT/ingest-$kind-server.log"
		stop_pid "$srv_pid"
		rm -rf "$dir"
	done
	echo
}

# bench_apply_summary: the tables and goals of the apply part.
bench_apply_summary() {
	if [[ $PROFILE == 1 ]]; then
		echo "== CPU profiles of the go test benchmarks ($OUT/cpu-*.prof, pprof -top in cpu-*.txt)"
		go test -c -o "$WORK/pipeline.test" ./pipeline
		for b in Receive/incompressible Receive/typical Apply/incompressible Apply/typical; do
			local f=${b//\//-}
			(cd pipeline && "$WORK/pipeline.test" -test.run '^$' -test.bench "^Benchmark$b\$" -test.benchtime 3s \
				-test.benchmem -test.cpuprofile "$OUT/cpu-$f.prof" -test.memprofile "$OUT/mem-$f.prof") | grep Benchmark || true
			go tool pprof -top -nodecount 30 "$WORK/pipeline.test" "$OUT/cpu-$f.prof" >"$OUT/cpu-$f.txt" 2>/dev/null || true
			go tool pprof -top -sample_index=alloc_space -nodecount 15 "$WORK/pipeline.test" "$OUT/mem-$f.prof" >"$OUT/mem-$f.txt" 2>/dev/null || true
		done
		echo
	fi

	python3 - "$OUT/pipeline-medians.tsv" "$OUT/ingest.txt" <<'PY' | tee "$OUT/summary-apply.txt"
import statistics, sys
from collections import defaultdict
med = {}
for line in open(sys.argv[1]):
    name, unit, v, n = line.rstrip("\n").split("\t")
    med[(name, unit)] = float(v)
runs = defaultdict(list)
for line in open(sys.argv[2]):
    f = line.split()
    if not f or f[0] != "run":
        continue
    d = dict(zip(f[0::2], f[1::2]))
    runs[(d["kind"], d.get("mode", "fresh"))].append(d)
seg = 32 << 20
gotest = bool(med)
if gotest:
    print("| go test (median of the runs) | segment MB/s | volume MB/s | ns/op | B/op | allocs/op |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
for kind in ("incompressible", "typical") if gotest else ():
    for b in ("Receive", "Apply"):
        k = f"Benchmark{b}/{kind}"
        ns = med[(k, "ns/op")]
        print(f"| {b}/{kind} | {med[(k, 'MB/s')]:.1f} | {seg / ns * 1e3:.1f} | {ns:,.0f} | {med[(k, 'B/op')]:,.0f} | {med[(k, 'allocs/op')]:.0f} |")
    r, a = med[(f"BenchmarkReceive/{kind}", "MB/s")], med[(f"BenchmarkApply/{kind}", "MB/s")]
    ns = med[(f"BenchmarkReceive/{kind}", "ns/op")] + med[(f"BenchmarkApply/{kind}", "ns/op")]
    allocs = med[(f"BenchmarkReceive/{kind}", "allocs/op")] + med[(f"BenchmarkApply/{kind}", "allocs/op")]
    print(f"| receive then apply, serial: 1/(1/r+1/a) | {1 / (1 / r + 1 / a):.1f} | {seg / ns * 1e3:.1f} | {ns:,.0f} | | {allocs:.0f} |")
print()
print("| end to end, real server (median) | replica | segment MB/s applied | volume MB/s applied | segment MB/s spooled | wire/raw | server CPU s/GB | server cores busy | client cores busy | runs (segment MB/s) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
e2e = {}
for kind in ("incompressible", "typical"):
    for mode in ("fresh", "overwrite"):
        rs = runs.get((kind, mode), [])
        if not rs:
            continue
        raw = statistics.median(int(d["raw_bytes"]) / float(d["applied_s"]) / 1e6 for d in rs)
        vol = statistics.median(int(d["volume_bytes"]) / float(d["applied_s"]) / 1e6 for d in rs)
        recv = statistics.median(int(d["raw_bytes"]) / float(d["recv_s"]) / 1e6 for d in rs)
        wr = statistics.median(int(d["wire_bytes"]) / int(d["raw_bytes"]) for d in rs)
        cpu = statistics.median(float(d["server_cpu_s"]) / (int(d["raw_bytes"]) / 1e9) for d in rs)
        busy = statistics.median(float(d["server_cpu_s"]) / float(d["applied_s"]) for d in rs)
        cbusy = statistics.median(float(d["client_cpu_s"]) / float(d["applied_s"]) for d in rs)
        e2e[(kind, mode)] = raw
        span = ", ".join(f"{int(d['raw_bytes']) / float(d['applied_s']) / 1e6:.0f}" for d in rs)
        print(f"| {kind} | {mode} | {raw:.1f} | {vol:.1f} | {recv:.1f} | {wr:.3f} | {cpu:.2f} | {busy:.2f} | {cbusy:.2f} | {len(rs)}: {span} |")
print()
for mode in ("fresh", "overwrite"):
    if ("incompressible", mode) in e2e:
        e = e2e[("incompressible", mode)]
        print(f"goal >= 300 MB/s incompressible, end to end, {mode:9s}: {'MET' if e >= 300 else 'MISSED'} ({e:.1f} MB/s)")
if gotest:
    r, a = med[("BenchmarkReceive/incompressible", "MB/s")], med[("BenchmarkApply/incompressible", "MB/s")]
    ser = 1 / (1 / r + 1 / a)
    print(f"goal >= 300 MB/s incompressible, serial go test:          {'MET' if ser >= 300 else 'MISSED'} ({ser:.1f} MB/s)")
PY
	echo "loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine-apply.txt"
	echo "raw results: $OUT"
}

# ---------------------------------------------------------------------------
# initial: initial replication vs cp --sparse=always.
bench_initial() {
	set -- initial
	local runs=${RUNS:-3} size=${SIZE_MIB:-4096} seed=${SEED:-4} dir=$WORK/initial r t0 t1 created want got
	machine initial
	build
	mkdir -p "$dir"
	echo "== image: $size MiB, 50 % holes, 25 % written zeros, 25 % random, runs of 1-16 MiB (seed $seed)"
	python3 - "$dir/image.img" "$size" "$seed" <<'PY' | tee "$OUT/initial-image.txt"
import os, random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
quota = {"hole": size // 2, "zero": size // 4}
quota["data"] = size - quota["hole"] - quota["zero"]
runs = []
for kind, n in quota.items():
    while n > 0:
        k = min(n, rng.randint(1, 16))
        runs.append((kind, k))
        n -= k
rng.shuffle(runs)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, size << 20)
zero, off = bytes(1 << 20), 0
for kind, k in runs:
    for _ in range(k):
        if kind == "data":
            os.pwrite(fd, rng.randbytes(1 << 20), off)
        elif kind == "zero":
            os.pwrite(fd, zero, off)
        off += 1 << 20
os.fsync(fd)
os.close(fd)
print(f"image {path}: {size} MiB in {len(runs)} runs; MiB of holes {quota['hole']}, written zeros {quota['zero']}, random data {quota['data']}")
PY
	want=$(sha256sum "$dir/image.img" | cut -d' ' -f1)
	echo "image sha256 $want, allocated $(du -m "$dir/image.img" | cut -f1) MiB"
	cp --version | head -1
	: >"$OUT/initial.txt"
	for r in $(seq "$runs"); do
		# cp --sparse=always, then fsync of the copy: the replica path
		# fsyncs what it wrote too.
		rm -f "$dir/copy.img"
		drop_caches
		local io0 io1
		io0=$(disk_io "$dir")
		t0=$(now)
		cp --sparse=always "$dir/image.img" "$dir/copy.img"
		sync "$dir/copy.img"
		t1=$(now)
		io1=$(disk_io "$dir")
		got=$(sha256sum "$dir/copy.img" | cut -d' ' -f1)
		[[ $got == "$want" ]] || { echo "replication.sh: cp copy differs ($got)" >&2; return 1; }
		echo "run $r cp seconds $(python3 -c "print(f'{$t1 - $t0:.3f}')") allocated_mib $(du -m "$dir/copy.img" | cut -f1)" \
			"disk_read_mib $(($(cut -d' ' -f1 <<<"$io1") - $(cut -d' ' -f1 <<<"$io0")))" \
			"disk_written_mib $(($(cut -d' ' -f2 <<<"$io1") - $(cut -d' ' -f2 <<<"$io0")))" | tee -a "$OUT/initial.txt"
		rm -f "$dir/copy.img"

		# Lifeboat: server up first (the recovery site is a running
		# service), then the clock starts with the agent process.
		local rd=$dir/run
		rm -rf "$rd" && mkdir -p "$rd"
		start_server "$rd"
		drop_caches
		local srv_cpu0 agent_cpu srv_cpu
		srv_cpu0=$(cpu_s "$srv_pid")
		io0=$(disk_io "$dir")
		start_agent "$rd" "$dir/image.img"
		t0=$agent_t0
		created=$(wait_resync "$rd" 1800)
		io1=$(disk_io "$dir")
		agent_cpu=$(cpu_s "$agent_pid")
		srv_cpu=$(python3 -c "print(f'{$(cpu_s "$srv_pid") - $srv_cpu0:.2f}')")
		local started took
		started=$(cat "$rd/resync-started" 2>/dev/null || true)
		[[ -n $started ]] && started=$(date -d "$started" +%s.%N)
		took=$(grep -o 'resync complete .*took=[^ ]*' "$rd/agent.log" | sed 's/.*took=//' || true)
		"$bin/lifeboat" points export --server "$srv_url" --data-dir "$WORK/site" --volume v1 --point latest \
			--out "$rd/export.img" >"$rd/export.out"
		got=$(awk '/^sha256/ {print $2}' "$rd/export.out")
		[[ $got == "$want" ]] || { echo "replication.sh: the replica differs from the image ($got)" >&2; return 1; }
		echo "run $r lifeboat seconds $(python3 -c "print(f'{$created - $t0:.3f}')")" \
			"from_resync_started $([[ -n $started ]] && python3 -c "print(f'{$created - $started:.3f}')" || echo -)" \
			"agent_resync_took $took agent_cpu_s $agent_cpu server_cpu_s $srv_cpu" \
			"disk_read_mib $(($(cut -d' ' -f1 <<<"$io1") - $(cut -d' ' -f1 <<<"$io0")))" \
			"disk_written_mib $(($(cut -d' ' -f2 <<<"$io1") - $(cut -d' ' -f2 <<<"$io0")))" \
			"replica_allocated_mib $(du -m "$rd/replicas" | tail -1 | cut -f1) sha256 ok" | tee -a "$OUT/initial.txt"
		grep -E 'resync|point created' "$rd/agent.log" "$rd/srv.log" >"$OUT/initial-run$r.log" || true
		grep -c 'segment applied' "$rd/srv.log" | sed 's/^/segments applied: /' >>"$OUT/initial-run$r.log" || true
		stop_pid "$agent_pid"
		stop_pid "$srv_pid"
		rm -rf "$rd"
	done
	if [[ $PROFILE == 1 ]] && command -v perf >/dev/null; then
		# One more lifeboat run (not in the medians) under a system-wide
		# perf record: where the CPU goes, by process and by symbol.
		local rd=$dir/run
		rm -rf "$rd" && mkdir -p "$rd"
		start_server "$rd"
		drop_caches
		perf record -a -g -F 499 -o "$OUT/perf-initial.data" 2>/dev/null &
		local perf_pid=$!
		pids+=("$perf_pid")
		start_agent "$rd" "$dir/image.img"
		wait_resync "$rd" 1800 >/dev/null
		kill -INT "$perf_pid"
		wait "$perf_pid" 2>/dev/null || true
		{
			echo "# by process"
			perf report -i "$OUT/perf-initial.data" --no-children --sort comm -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
			echo "# by process and symbol"
			perf report -i "$OUT/perf-initial.data" --no-children --sort comm,symbol -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
			echo "# lifeboat (the server), with callees"
			perf report -i "$OUT/perf-initial.data" --comm lifeboat --children --sort symbol -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
			echo "# lifeboat-agent, with callees"
			perf report -i "$OUT/perf-initial.data" --comm lifeboat-agent --children --sort symbol -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
		} >"$OUT/perf-initial.txt" || true
		stop_pid "$agent_pid"
		stop_pid "$srv_pid"
		rm -rf "$rd"
	fi
	echo
	python3 - "$OUT/initial.txt" <<'PY' | tee "$OUT/summary-initial.txt"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.startswith("run ")]
rows = [(f[2], dict(zip(f[3::2], f[4::2]))) for f in rows]
cp = [float(d["seconds"]) for k, d in rows if k == "cp"]
lb = [d for k, d in rows if k == "lifeboat"]
mc = statistics.median(cp)
ml = statistics.median(float(d["seconds"]) for d in lb)
runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
print("| initial replication | median s | runs (s) | vs cp |")
print("| --- | ---: | --- | ---: |")
print(f"| cp --sparse=always + sync | {mc:.2f} | {runs(cp)} | 1.00x |")
print(f"| lifeboat, agent start to point created | {ml:.2f} | {runs(float(d['seconds']) for d in lb)} | {ml / mc:.2f}x |")
fr = [float(d["from_resync_started"]) for d in lb if d.get("from_resync_started", "-") != "-"]
if fr:
    print(f"| lifeboat, resync started to point created | {statistics.median(fr):.2f} | {runs(fr)} | {statistics.median(fr) / mc:.2f}x |")
cps = [d for k, d in rows if k == "cp"]
if all("disk_written_mib" in d for d in cps + lb):
    md = lambda ds, k: statistics.median(float(d[k]) for d in ds)
    print(f"\ndisk I/O per run (median MiB, whole device): cp read {md(cps, 'disk_read_mib'):.0f} written {md(cps, 'disk_written_mib'):.0f}; "
          f"lifeboat read {md(lb, 'disk_read_mib'):.0f} written {md(lb, 'disk_written_mib'):.0f}")
if all("agent_cpu_s" in d for d in lb):
    ac = statistics.median(float(d["agent_cpu_s"]) for d in lb)
    sc = statistics.median(float(d["server_cpu_s"]) for d in lb)
    print(f"\nlifeboat CPU (median): agent {ac:.2f} s, server {sc:.2f} s; {(ac + sc) / ml:.2f} of {__import__('os').cpu_count()} cores busy on average")
print()
print(f"goal <= 1.5x cp: {'MET' if ml / mc <= 1.5 else 'MISSED'} ({ml / mc:.2f}x)")
PY
	echo "loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine-$1.txt"
	echo "raw results: $OUT"
}

# ---------------------------------------------------------------------------
# rpo: recovery-point lag under fio churn.
bench_rpo() {
	set -- rpo
	local runs=${RUNS:-3} rate=${RATE:-50m} runtime=${RUNTIME:-60} size=${SIZE_MIB:-2048} bsz=${BS:-64k}
	local iodepth=${IODEPTH:-8} tagi=${TAG_INTERVAL:-1s} extra=${EXTRA_RATES:-} r rt label rd poller want got
	command -v fio >/dev/null || { echo "replication.sh: fio is missing (apt-get install fio)" >&2; return 2; }
	machine rpo
	fio --version | tee -a "$OUT/machine-rpo.txt"
	build
	: >"$OUT/rpo.txt"
	local plan=()
	for r in $(seq "$runs"); do plan+=("$rate:$r"); done
	for rt in $extra; do plan+=("$rt:1"); done
	local step
	for step in "${plan[@]}"; do
		rt=${step%%:*} r=${step##*:}
		label=$rt/$r
		[[ $rt == 0 ]] && label=unthrottled/$r
		rd=$WORK/rpo
		rm -rf "$rd" && mkdir -p "$rd"
		truncate -s "${size}M" "$rd/vol.img"
		start_server "$rd"
		start_agent "$rd" "$rd/vol.img" --tag-interval "$tagi"
		wait_resync "$rd" 300 >/dev/null
		# The status file is rewritten every second: wait until it says
		# the initial replication is over.
		for _ in $(seq 50); do
			python3 -c 'import json, sys; t = json.load(open(sys.argv[1]))["tracker"]; sys.exit(t["Resync"] != "" or t["Mode"] != "journal")' \
				"$rd/journal/v1/status.json" 2>/dev/null && break
			sleep 0.1
		done
		# Poll the agent's status every second: it must stay in journal mode.
		(while :; do
			echo "$(date +%s) $(tr -d '\n' <"$rd/journal/v1/status.json" 2>/dev/null)"
			sleep 1
		done) >"$rd/status.log" &
		poller=$!
		pids+=("$poller")
		local rateflag=()
		[[ $rt != 0 ]] && rateflag=(--rate="$rt")
		echo "== $label: fio randwrite bs=$bsz iodepth=$iodepth ${rateflag[*]:-unthrottled} for ${runtime}s on $size MiB, tags every $tagi"
		fio --name=rpo --ioengine=nbd --uri="$nbd_uri" --rw=randwrite --bs="$bsz" --iodepth="$iodepth" "${rateflag[@]}" \
			--size="${size}M" --time_based --runtime="$runtime" --refill_buffers --write_lat_log="$rd/fio" \
			--log_unix_epoch=1 --output-format=json --output="$rd/fio.json" >/dev/null
		# Wait until a point holds the last write (polling once a second:
		# the polling shares the two cores with the server's last applies).
		for _ in $(seq 600); do
			sleep 1
			points >"$rd/points.json"
			"$bin/rpolag" -check -lat "$rd/fio_lat.1.log" -points "$rd/points.json" && break
		done
		sleep 1.5 # one more status poll
		stop_pid "$poller"
		python3 - "$rd/fio.json" <<'PY' | tee -a "$OUT/rpo.txt"
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(f"fio write bw {w['bw_bytes'] / 1e6:.1f} MB/s, {w['iops']:.0f} IOPS, clat p50 {w['clat_ns']['percentile']['50.000000'] / 1e6:.2f} ms p99 {w['clat_ns']['percentile']['99.000000'] / 1e6:.2f} ms")
PY
		"$bin/rpolag" -lat "$rd/fio_lat.1.log" -points "$rd/points.json" -log "$rd/srv.log" -status "$rd/status.log" \
			-label "$label" | tee -a "$OUT/rpo.txt"
		# The newest point is the volume as fio left it.
		want=$(sha256sum "$rd/vol.img" | cut -d' ' -f1)
		"$bin/lifeboat" points export --server "$srv_url" --data-dir "$WORK/site" --volume v1 --point latest \
			--out "$rd/export.img" >"$rd/export.out"
		got=$(awk '/^sha256/ {print $2}' "$rd/export.out")
		if [[ $got == "$want" ]]; then
			echo "latest point = volume: sha256 ok" | tee -a "$OUT/rpo.txt"
		else
			echo "latest point != volume: $got vs $want" | tee -a "$OUT/rpo.txt"
		fi
		mkdir -p "$OUT/rpo-${label//\//-}"
		cp "$rd/srv.log" "$rd/agent.log" "$rd/status.log" "$rd/points.json" "$rd/fio.json" "$OUT/rpo-${label//\//-}/"
		gzip -c "$rd/fio_lat.1.log" >"$OUT/rpo-${label//\//-}/fio_lat.1.log.gz"
		stop_pid "$agent_pid"
		stop_pid "$srv_pid"
		rm -rf "$rd"
		echo
	done
	python3 - "$OUT/rpo.txt" "$rate" <<'PY' | tee "$OUT/summary-rpo.txt"
import statistics, sys
from collections import defaultdict
res, fio = defaultdict(list), []
for line in open(sys.argv[1]):
    if line.startswith("fio write bw"):
        fio.append(float(line.split()[3]))
    if line.startswith("RESULT "):
        d = dict(kv.split("=", 1) for kv in line.split()[1:])
        d["bw"] = fio[-1] if fio else 0
        res[d["label"].rsplit("/", 1)[0]].append(d)
print("| fio rate | runs | fio MB/s | writes | points | lag p50 s | lag p99 s | lag max s | uniform p99 s | point created - tag p50/max s | left journal mode |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
m = lambda rs, k: statistics.median(float(d[k]) for d in rs)
for rate, rs in res.items():
    print(f"| {rate} | {len(rs)} | {m(rs, 'bw'):.1f} | {m(rs, 'writes'):.0f} | {m(rs, 'points'):.0f} | {m(rs, 'p50'):.3f} | {m(rs, 'p99'):.3f} | {m(rs, 'max'):.3f} | {m(rs, 'u_p99'):.3f} | {m(rs, 'apply_p50'):.3f}/{m(rs, 'apply_max'):.3f} | {sum(int(d['bitmap']) for d in rs)} of {len(rs)} |")
main = res.get(sys.argv[2], [])
if main:
    p99 = m(main, "p99")
    ok = p99 <= 10 and all(d["bitmap"] == "0" and d["uncovered"] == "0" for d in main)
    print(f"\ngoal p99 <= 10 s at {sys.argv[2]}: {'MET' if ok else 'MISSED'} (median p99 {p99:.3f} s over {len(main)} runs)")
PY
	echo "loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine-$1.txt"
	echo "raw results: $OUT"
}

case $what in
apply) bench_apply ;;
initial) bench_initial ;;
rpo) bench_rpo ;;
all)
	bench_apply
	bench_initial
	bench_rpo
	;;
esac
