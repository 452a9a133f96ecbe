# medians.awk: from `go test -bench` output, one line per benchmark and
# metric: "benchmark<TAB>unit<TAB>median<TAB>runs". Used by the bench/*.sh scripts.
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		if (!(name in seen)) { seen[name] = 1; order[++nn] = name }
		for (i = 3; i + 1 <= NF; i += 2) {
			key = name SUBSEP $(i + 1)
			vals[key] = vals[key] " " $i
			if (!((name, "u", $(i + 1)) in hasu)) { hasu[name, "u", $(i + 1)] = 1; units[name] = units[name] " " $(i + 1) }
		}
	}
	function median(s,    a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END {
		for (k = 1; k <= nn; k++) {
			name = order[k]; nu = split(units[name], us, " ")
			for (u = 1; u <= nu; u++) printf "%s\t%s\t%s\t%d\n", name, us[u], median(vals[name, us[u]]), split(vals[name, us[u]], tmp, " ")
		}
	}
