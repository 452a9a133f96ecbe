// Command rpolag computes the recovery-point lag of the writes of a fio run
// against a replicating Lifeboat agent (bench/rpo.sh): for a write acked at
// time t, the lag is the creation time of the first recovery point whose
// tag was taken after t, minus t. That point contains the write: the agent
// acks a write only after journaling it, and a tag taken later gets a
// higher seq.
//
// Inputs:
//
//   - -lat: fio's per-I/O latency log (write_lat_log with log_unix_epoch=1):
//     "time_ms, latency_ns, ddir, bs, offset[, prio]" per completed write;
//     time_ms is the completion (the ack as the client saw it), Unix ms.
//   - -points: `lifeboat points list --output json` (tag times in ns).
//   - -log: the server's stderr, for "recovery point created ... seq=N ...
//     lag=D" (lag = creation − tag time, measured by the server after the
//     point is durable), so creation = tag time + lag.
//   - -status: optional; lines "UNIX_SECONDS {ShipperStatus JSON}" polled
//     during the run, to check the agent stayed in journal mode.
//
// A write's time is known to the millisecond only: it is taken as the
// start of its millisecond (its lag is overstated by less than 1 ms) and
// only tags at least 1 ms later count as after it (never a point that
// might not contain it).
//
// With -check it only reports whether every write is in a point yet (exit
// 0) or not (exit 3).
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"lifeboat/pipeline"
	"lifeboat/tracker"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "rpolag:", err)
		os.Exit(1)
	}
}

type point struct {
	seq     uint64
	tag     time.Time
	created time.Time // zero when the log has no line for it
	name    string
}

func run() error {
	latPath := flag.String("lat", "", "fio write latency log (write_lat_log, log_unix_epoch=1)")
	pointsPath := flag.String("points", "", "JSON of `lifeboat points list --output json`")
	logPath := flag.String("log", "", "the server's stderr")
	statusPath := flag.String("status", "", "optional: polled agent status, one \"UNIX_SECONDS JSON\" per line")
	sample := flag.Duration("sample", 10*time.Millisecond, "step of the uniform time sample")
	check := flag.Bool("check", false, "only check that every write is in a recovery point (exit 3 if not)")
	label := flag.String("label", "", "label for the RESULT line")
	flag.Parse()
	if *latPath == "" || *pointsPath == "" {
		return errors.New("-lat and -points are required")
	}
	acks, err := readAcks(*latPath)
	if err != nil {
		return err
	}
	if len(acks) == 0 {
		return fmt.Errorf("%s: no writes", *latPath)
	}
	points, err := readPoints(*pointsPath)
	if err != nil {
		return err
	}
	last := acks[len(acks)-1]
	if *check {
		if len(points) == 0 || points[len(points)-1].tag.Before(last.Add(time.Millisecond)) {
			os.Exit(3) // quietly: the caller polls
		}
		return nil
	}
	if *logPath == "" {
		return errors.New("-log is required")
	}
	if err := readCreated(*logPath, points); err != nil {
		return err
	}
	// Points created by the server, in seq order; creation times must
	// not go back.
	var pts []point
	for _, p := range points {
		if p.created.IsZero() {
			continue
		}
		if n := len(pts); n > 0 && p.created.Before(pts[n-1].created) {
			return fmt.Errorf("point %d created before point %d", p.seq, pts[n-1].seq)
		}
		pts = append(pts, p)
	}
	// lagAt is the lag of a write acked in the millisecond starting at t.
	lagAt := func(t time.Time) (time.Duration, bool) {
		need := t.Add(time.Millisecond)
		i, _ := slices.BinarySearchFunc(pts, need, func(p point, t time.Time) int { return p.tag.Compare(t) })
		if i == len(pts) {
			return 0, false
		}
		return pts[i].created.Sub(t), true
	}
	var perWrite, uniform []time.Duration
	uncovered := 0
	for _, t := range acks {
		if d, ok := lagAt(t); ok {
			perWrite = append(perWrite, d)
		} else {
			uncovered++
		}
	}
	first := acks[0]
	for t := first; !t.After(last); t = t.Add(*sample) {
		if d, ok := lagAt(t.Truncate(time.Millisecond)); ok {
			uniform = append(uniform, d)
		}
	}
	// Points taken during the run, their spacing and the server's share
	// of the lag (creation − tag).
	var during []point
	for _, p := range pts {
		if !p.tag.Before(first) && !p.tag.After(last.Add(5*time.Second)) {
			during = append(during, p)
		}
	}
	var gaps, applyLag []time.Duration
	for i, p := range during {
		applyLag = append(applyLag, p.created.Sub(p.tag))
		if i > 0 {
			gaps = append(gaps, p.tag.Sub(during[i-1].tag))
		}
	}
	modes, maxJournal, maxRPO, gens, polls, err := readStatus(*statusPath)
	if err != nil {
		return err
	}

	fmt.Printf("writes %d acked %s .. %s (%.1f s); %d not in any point yet\n", len(acks),
		first.UTC().Format("15:04:05.000"), last.UTC().Format("15:04:05.000"), last.Sub(first).Seconds(), uncovered)
	fmt.Printf("points with a tag in the run: %d (of %d listed, %d with a creation time in the log)\n", len(during), len(points), len(pts))
	show := func(name string, ds []time.Duration) {
		if len(ds) == 0 {
			fmt.Printf("%-34s none\n", name)
			return
		}
		fmt.Printf("%-34s n=%-6d p50 %7.3fs  p99 %7.3fs  max %7.3fs  mean %7.3fs\n", name, len(ds),
			pct(ds, 50).Seconds(), pct(ds, 99).Seconds(), pct(ds, 100).Seconds(), mean(ds).Seconds())
	}
	show("lag, every acked write", perWrite)
	show(fmt.Sprintf("lag, uniform t every %v", *sample), uniform)
	show("tag spacing", gaps)
	show("point creation - tag time", applyLag)
	if *statusPath != "" {
		fmt.Printf("agent status polled %d times: modes %v, generations %v, max journal %.1f MiB, max RPO %.1f s\n",
			polls, modes, gens, float64(maxJournal)/(1<<20), maxRPO)
	}
	bitmap := 0
	for _, m := range modes {
		if m != tracker.ModeJournal {
			bitmap = 1
		}
	}
	if len(gens) > 1 {
		bitmap = 1
	}
	fmt.Printf("RESULT label=%s writes=%d uncovered=%d p50=%.3f p99=%.3f max=%.3f u_p50=%.3f u_p99=%.3f u_max=%.3f points=%d gap_p50=%.3f apply_p50=%.3f apply_p99=%.3f apply_max=%.3f bitmap=%d max_journal_mib=%.1f\n",
		*label, len(acks), uncovered, sec(pct(perWrite, 50)), sec(pct(perWrite, 99)), sec(pct(perWrite, 100)),
		sec(pct(uniform, 50)), sec(pct(uniform, 99)), sec(pct(uniform, 100)), len(during), sec(pct(gaps, 50)),
		sec(pct(applyLag, 50)), sec(pct(applyLag, 99)), sec(pct(applyLag, 100)), bitmap, float64(maxJournal)/(1<<20))
	if uncovered > 0 {
		return fmt.Errorf("%d writes are in no recovery point", uncovered)
	}
	return nil
}

func sec(d time.Duration) float64 { return d.Seconds() }

// pct is the nearest-rank percentile (100 = max); NaN-free: 0 for none.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// readAcks returns the completion times of the writes in a fio latency
// log, sorted.
func readAcks(path string) ([]time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []time.Time
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Split(sc.Text(), ",")
		if len(fields) < 3 {
			continue
		}
		if strings.TrimSpace(fields[2]) != "1" { // ddir: 1 = write
			continue
		}
		ms, err := strconv.ParseInt(strings.TrimSpace(fields[0]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if ms < 1e12 {
			return nil, fmt.Errorf("%s:%d: time %d is not Unix milliseconds (run fio with --log_unix_epoch=1)", path, n, ms)
		}
		out = append(out, time.UnixMilli(ms))
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out, sc.Err()
}

func readPoints(path string) ([]point, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ps []pipeline.Point
	if err := json.Unmarshal(b, &ps); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := make([]point, len(ps))
	for i, p := range ps {
		out[i] = point{seq: p.Seq, tag: p.Time, name: p.Name}
	}
	slices.SortFunc(out, func(a, b point) int { return cmp.Compare(a.seq, b.seq) })
	return out, nil
}

var createdRE = regexp.MustCompile(`recovery point created .*\bseq=(\d+) .*\blag=(\S+)`)

// readCreated sets each point's creation time from the server log.
func readCreated(path string, points []point) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	lags := map[uint64]time.Duration{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := createdRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		seq, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(m[2])
		if err != nil {
			return fmt.Errorf("%s: lag %q: %w", path, m[2], err)
		}
		lags[seq] = d
	}
	for i := range points {
		if d, ok := lags[points[i].seq]; ok {
			points[i].created = points[i].tag.Add(d)
		}
	}
	return sc.Err()
}

// agentStatus is the part of the agent's status file (pipeline.ShipperStatus
// as JSON) used here; rpo_seconds may be null before the first point.
type agentStatus struct {
	RPOSeconds *float64 `json:"rpo_seconds"`
	Tracker    struct {
		Mode         string
		Resync       string
		Generation   uint64
		JournalBytes int64
	} `json:"tracker"`
}

func readStatus(path string) (modes []string, maxJournal int64, maxRPO float64, gens []uint64, n int, err error) {
	if path == "" {
		return nil, 0, 0, nil, 0, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, 0, nil, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		_, js, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var st agentStatus
		if json.Unmarshal([]byte(js), &st) != nil {
			continue // a status file caught mid-rename
		}
		n++
		if !slices.Contains(modes, st.Tracker.Mode) {
			modes = append(modes, st.Tracker.Mode)
		}
		if st.Tracker.Resync != "" && !slices.Contains(modes, "resync") {
			modes = append(modes, "resync")
		}
		if !slices.Contains(gens, st.Tracker.Generation) {
			gens = append(gens, st.Tracker.Generation)
		}
		maxJournal = max(maxJournal, st.Tracker.JournalBytes)
		if st.RPOSeconds != nil {
			maxRPO = max(maxRPO, *st.RPOSeconds)
		}
	}
	return modes, maxJournal, maxRPO, gens, n, sc.Err()
}
