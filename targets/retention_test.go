package targets_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"lifeboat/targets"
)

var t0 = time.Date(2024, 3, 20, 0, 0, 0, 0, time.UTC)

// series returns points every step from first to last (inclusive), seqs
// from 1.
func series(first, last time.Time, step time.Duration) []targets.Point {
	var ps []targets.Point
	for t := first; !t.After(last); t = t.Add(step) {
		ps = append(ps, targets.Point{Seq: uint64(len(ps) + 1), Generation: 1, Time: t})
	}
	return ps
}

func times(ps []targets.Point) []time.Time {
	out := make([]time.Time, len(ps))
	for i, p := range ps {
		out[i] = p.Time
	}
	return out
}

func diffTimes(got, want []time.Time) string {
	var b strings.Builder
	g := map[time.Time]bool{}
	for _, t := range got {
		g[t] = true
	}
	w := map[time.Time]bool{}
	for _, t := range want {
		w[t] = true
		if !g[t] {
			fmt.Fprintf(&b, "missing %s; ", t.Format(time.RFC3339))
		}
	}
	for _, t := range got {
		if !w[t] {
			fmt.Fprintf(&b, "unexpected %s; ", t.Format(time.RFC3339))
		}
	}
	return b.String()
}

func TestRetentionSelect(t *testing.T) {
	now := time.Date(2024, 1, 10, 12, 0, 0, 0, time.UTC)
	var want5min []time.Time
	// Hours 12..23 of the day before and 00..09 of today keep hh:55.
	for h := now.Add(-24 * time.Hour); h.Before(now.Add(-2 * time.Hour)); h = h.Add(time.Hour) {
		want5min = append(want5min, h.Add(55*time.Minute))
	}
	// Younger than 2 h: every point (10:05 .. 12:00); 10:00 (exactly 2 h)
	// is in the hour bucket of 10:55 and goes.
	for m := now.Add(-115 * time.Minute); !m.After(now); m = m.Add(5 * time.Minute) {
		want5min = append(want5min, m)
	}

	var want30 []time.Time
	day := 24 * time.Hour
	// 7 to 15 days: 4 h buckets, each keeps hh+3:30.
	for b := t0.Add(-15 * day); b.Before(t0.Add(-7 * day)); b = b.Add(4 * time.Hour) {
		want30 = append(want30, b.Add(3*time.Hour+30*time.Minute))
	}
	// 24 h to 7 days: 2 h buckets keep hh+1:30.
	for b := t0.Add(-7 * day); b.Before(t0.Add(-day)); b = b.Add(2 * time.Hour) {
		want30 = append(want30, b.Add(90*time.Minute))
	}
	// 2 h to 24 h: hour buckets keep hh:30 (hours 00..21).
	for b := t0.Add(-day); b.Before(t0.Add(-2 * time.Hour)); b = b.Add(time.Hour) {
		want30 = append(want30, b.Add(30*time.Minute))
	}
	want30 = append(want30, t0.Add(-90*time.Minute), t0.Add(-time.Hour), t0.Add(-30*time.Minute), t0)

	tests := []struct {
		name   string
		window time.Duration
		points []targets.Point
		now    time.Time
		want   []time.Time
		count  int
	}{
		{"every 5 min for 3 days, window 24h", 24 * time.Hour,
			series(now.Add(-72*time.Hour), now, 5*time.Minute), now, want5min, 22 + 24},
		{"every 30 min for 16 days, window 15 days", targets.MaxRetentionWindow,
			series(t0.Add(-16*day), t0, 30*time.Minute), t0, want30, 48 + 72 + 22 + 4},
		{"all older than the window: newest kept", time.Hour,
			series(now.Add(-10*time.Hour), now.Add(-5*time.Hour), time.Hour), now,
			[]time.Time{now.Add(-5 * time.Hour)}, 1},
		{"single point", time.Hour, series(now.Add(-48*time.Hour), now.Add(-48*time.Hour), time.Hour), now,
			[]time.Time{now.Add(-48 * time.Hour)}, 1},
		{"empty", time.Hour, nil, now, nil, 0},
		{"points in the future are kept", time.Hour, series(now.Add(time.Minute), now.Add(3*time.Minute), time.Minute), now,
			[]time.Time{now.Add(time.Minute), now.Add(2 * time.Minute), now.Add(3 * time.Minute)}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := targets.Retention{Window: tc.window}
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
			keep, prune := r.Select(tc.points, tc.now)
			if len(keep) != tc.count || len(tc.want) != tc.count {
				t.Errorf("kept %d points, want %d (table lists %d)", len(keep), tc.count, len(tc.want))
			}
			if d := diffTimes(times(keep), tc.want); d != "" {
				t.Errorf("kept set differs: %s", d)
			}
			if len(keep)+len(prune) != len(tc.points) {
				t.Fatalf("keep %d + prune %d != %d points", len(keep), len(prune), len(tc.points))
			}
			checkSorted(t, keep)
			checkSorted(t, prune)
		})
	}
}

func checkSorted(t *testing.T, ps []targets.Point) {
	t.Helper()
	if !slices.IsSortedFunc(ps, func(a, b targets.Point) int { return int(a.Seq) - int(b.Seq) }) {
		t.Fatalf("output not oldest first: %v", ps)
	}
}

// TestRetentionStable checks that pruning is final: running Select later on
// the kept points gives what a single run on all points gives.
func TestRetentionStable(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for trial := range 40 {
		window := time.Duration(1+r.IntN(15*24)) * time.Hour
		ret := targets.Retention{Window: window}
		var all []targets.Point
		tm := t0.Add(-time.Duration(r.IntN(16*24*60)) * time.Minute)
		for tm.Before(t0) {
			all = append(all, targets.Point{Seq: uint64(len(all) + 1), Time: tm})
			tm = tm.Add(time.Duration(1+r.IntN(90)) * time.Minute)
		}
		now := t0
		kept := all
		for step := range 30 {
			now = now.Add(time.Duration(r.IntN(600)) * time.Minute)
			kept, _ = ret.Select(kept, now)
			fromAll, _ := ret.Select(all, now)
			if d := diffTimes(times(kept), times(fromAll)); d != "" {
				t.Fatalf("trial %d step %d (window %v, now %v): incremental and single run differ: %s",
					trial, step, window, now, d)
			}
		}
	}
}

// TestRetentionMatchesDefinition compares Select with a direct, quadratic
// reading of the schedule on random points.
func TestRetentionMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	grain := func(age time.Duration) time.Duration {
		switch {
		case age < 2*time.Hour:
			return 0
		case age < 24*time.Hour:
			return time.Hour
		case age < 7*24*time.Hour:
			return 2 * time.Hour
		}
		return 4 * time.Hour
	}
	for range 50 {
		ret := targets.Retention{Window: time.Duration(1+r.IntN(15*24)) * time.Hour}
		var ps []targets.Point
		for tm := t0.Add(-16 * 24 * time.Hour); tm.Before(t0); tm = tm.Add(time.Duration(1+r.IntN(300)) * time.Minute) {
			ps = append(ps, targets.Point{Seq: uint64(len(ps) + 1), Time: tm})
		}
		keep, _ := ret.Select(ps, t0)
		var want []time.Time
		for i, p := range ps {
			age := t0.Sub(p.Time)
			ok := i == len(ps)-1 || age <= ret.Window
			if g := grain(age); ok && g != 0 && i < len(ps)-1 {
				for _, q := range ps[i+1:] {
					if q.Time.Truncate(g).Equal(p.Time.Truncate(g)) {
						ok = false
					}
				}
			}
			if ok {
				want = append(want, p.Time)
			}
		}
		if d := diffTimes(times(keep), want); d != "" {
			t.Fatalf("window %v: %s", ret.Window, d)
		}
	}
}

func TestRetentionValidate(t *testing.T) {
	for _, w := range []time.Duration{0, -time.Hour, targets.MaxRetentionWindow + time.Second} {
		if err := (targets.Retention{Window: w}).Validate(); err == nil {
			t.Errorf("window %v accepted", w)
		}
	}
	for _, w := range []time.Duration{time.Minute, targets.DefaultRetentionWindow, targets.MaxRetentionWindow} {
		if err := (targets.Retention{Window: w}).Validate(); err != nil {
			t.Errorf("window %v: %v", w, err)
		}
	}
}
