#!/usr/bin/env bash
# bench/journal.sh — journal append and intercepting-volume benchmarks, side
# by side with a plain os.File.WriteAt baseline (BENCHMARKS.md, "Journal and
# intercepting volume (issue 2)").
#
# Usage, from the repository root:
#
#	bench/journal.sh
#
# Environment:
#	COUNT=5        runs of each benchmark (medians are taken over them)
#	BENCHTIME=1s   go test -benchtime
#	OUT=DIR        where raw results go (default: a new temporary directory)
#
# Every file the benchmarks write lives in go test's b.TempDir(), that is under
# $TMPDIR (default /tmp): the file system of that directory is what is measured.
set -euo pipefail

cd "$(git rev-parse --show-toplevel 2>/dev/null || dirname "$0")"
if [[ ! -f go.mod || ! -d hrl || ! -d tracker ]]; then
	echo "journal.sh: run me from the lifeboat repository" >&2
	exit 2
fi

COUNT=${COUNT:-5}
BENCHTIME=${BENCHTIME:-1s}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-bench.XXXXXX")}
mkdir -p "$OUT"
tmp=${TMPDIR:-/tmp}

# Machine facts, also written into the raw files as benchstat configuration
# lines ("key: value").
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
fs_type=$(df -T "$tmp" | awk 'NR == 2 {print $2 " on " $1}')
{
	echo "nproc: $(nproc)"
	echo "cpumodel: ${cpu_model:-unknown}"
	echo "kernel: $(uname -r)"
	echo "goversion: $(go env GOVERSION)"
	echo "tmpdir: $tmp ($fs_type)"
	echo "memtotal: $(awk '/^MemTotal/ {print $2 " " $3}' /proc/meminfo)"
} | tee "$OUT/machine.txt"
echo "raw results: $OUT"
echo

run() { # run NAME PKG BENCH-REGEXP
	local name=$1 pkg=$2 re=$3
	echo "== go test -run '^\$' -bench '$re' -benchmem -count $COUNT -benchtime $BENCHTIME $pkg"
	cp "$OUT/machine.txt" "$OUT/$name.txt"
	go test -run '^$' -bench "$re" -benchmem -count "$COUNT" -benchtime "$BENCHTIME" "$pkg" | tee -a "$OUT/$name.txt"
	echo
}
run hrl ./hrl 'Append|Baseline'
run tracker ./tracker 'VolumeWriteAt|BaselineWriteAt'

# benchstat when the module proxy has it; @latest first, then a pinned
# version; otherwise the medians below are all there is.
benchstat=""
for v in latest v0.0.0-20260908200009-22c9c6c9d4da; do
	if go run "golang.org/x/perf/cmd/benchstat@$v" -h >/dev/null 2>&1; then
		benchstat="golang.org/x/perf/cmd/benchstat@$v"
		break
	fi
done
if [[ -n $benchstat ]]; then
	# 5 samples give no 95% interval for a median; min..max of 5 covers it
	# with 94% confidence, so ask for 90%.
	for name in hrl tracker; do
		echo "== benchstat ($benchstat) -confidence 0.9 $name"
		go run "$benchstat" -confidence 0.9 "$OUT/$name.txt"
		echo
	done
else
	echo "== benchstat unavailable; medians computed with awk"
	echo
fi

# Medians of every metric, per benchmark, with awk (always printed: the
# ratios below are computed from them).
medians() { awk -f bench/medians.awk "$@"; } # medians FILE...
medians "$OUT/hrl.txt" | sed 's/^/hrl\t/' >"$OUT/medians.tsv"
medians "$OUT/tracker.txt" | sed 's/^/tracker\t/' >>"$OUT/medians.tsv"

echo "== medians of $COUNT runs"
awk -F'\t' '
	{ v[$1 "\t" $2, $3] = $4; if (!(($1 "\t" $2) in seen)) { seen[$1 "\t" $2] = 1; order[++n] = $1 "\t" $2 } }
	END {
		printf "%-8s %-36s %9s %11s %8s %9s %10s %11s\n", "pkg", "benchmark", "MB/s", "ns/op", "B/op", "allocs/op", "mallocs/op", "seal-ns/op"
		for (i = 1; i <= n; i++) {
			split(order[i], p, "\t")
			seal = ((order[i], "seal-ns/op") in v) ? sprintf("%.0f", v[order[i], "seal-ns/op"]) : "-"
			printf "%-8s %-36s %9.1f %11.0f %8.0f %9.0f %10.4f %11s\n", p[1], p[2], v[order[i], "MB/s"], v[order[i], "ns/op"], v[order[i], "B/op"], v[order[i], "allocs/op"], v[order[i], "mallocs/op"], seal
		}
	}' "$OUT/medians.tsv" | tee "$OUT/summary.txt"
echo

echo "== ratios of median MB/s to the baseline of the same run and size" | tee -a "$OUT/summary.txt"
awk -F'\t' '
	$3 == "MB/s" { mb[$1 "\t" $2] = $4 }
	$3 == "allocs/op" { al[$1 "\t" $2] = $4 }
	function ratio(a, b) { return (b > 0) ? a / b : 0 }
	END {
		for (s = 1; s <= 2; s++) {
			size = (s == 1) ? "4KiB" : "1MiB"
			base = mb["hrl\tBenchmarkBaselineWriteAt/" size]
			split("dedupe nodedupe dup", modes, " ")
			for (m = 1; m <= 3; m++) {
				k = "hrl\tBenchmarkAppend/" size "/" modes[m]
				printf "journal append %-4s %-8s / baseline WriteAt %-4s = %.3f  (%.1f / %.1f MB/s)\n", size, modes[m], size, ratio(mb[k], base), mb[k], base
			}
			# Same file pattern as the journal (new files, fsync at each
			# roll), without the record format.
			af = mb["hrl\tBenchmarkBaselineAppendFile/" size]
			k = "hrl\tBenchmarkAppend/" size "/nodedupe"
			printf "journal append %-4s nodedupe / baseline AppendFile %-4s = %.3f  (%.1f / %.1f MB/s)\n", size, size, ratio(mb[k], af), mb[k], af
		}
		for (s = 1; s <= 2; s++) {
			size = (s == 1) ? "4KiB" : "1MiB"
			k = "tracker\tBenchmarkVolumeWriteAt/" size; b = "tracker\tBenchmarkBaselineWriteAt/" size
			r = ratio(mb[k], mb[b])
			printf "Volume.WriteAt %-4s / baseline WriteAt %-4s = %.3f  (%.1f / %.1f MB/s), allocs/op %s\n", size, size, r, mb[k], mb[b], al[k]
		}
		k = "tracker\tBenchmarkVolumeWriteAt/1MiB"; r = ratio(mb[k], mb["tracker\tBenchmarkBaselineWriteAt/1MiB"])
		printf "goal Volume.WriteAt(1MiB) >= 0.45x baseline: %s (%.3f)\n", (r >= 0.45) ? "MET" : "MISSED", r
		printf "goal 0 allocs/op at 1MiB:                    %s (%s)\n", (al[k] == 0) ? "MET" : "MISSED", al[k]
	}' "$OUT/medians.tsv" | tee -a "$OUT/summary.txt"
echo
echo "raw results, medians.tsv and summary.txt: $OUT"
