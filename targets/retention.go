package targets

import (
	"fmt"
	"time"
)

// Retention windows.
const (
	DefaultRetentionWindow = 24 * time.Hour
	MaxRetentionWindow     = 15 * 24 * time.Hour
)

// Ages at which the retention schedule thins points more.
const (
	retainAllAge = 2 * time.Hour      // younger points are all kept
	hourlyAge    = 24 * time.Hour     // up to this age: one point per hour
	twoHourlyAge = 7 * 24 * time.Hour // up to this age: one point per 2 h; beyond: per 4 h
)

// Retention is the tiered schedule that decides which recovery points to
// keep, modelled on Azure Site Recovery's pruning of recovery points.
//
// A point's age is now minus its Time. Then:
//
//   - a point older than Window is pruned;
//   - a point younger than 2 h is kept;
//   - an older point is thinned by its age: from 2 h to 24 h one point per
//     clock hour is kept, from 24 h to 7 days one per 2 h, beyond 7 days
//     one per 4 h;
//   - the newest point (highest Seq) is always kept, even when older than
//     Window, so a replica that stopped receiving tags keeps its last one.
//
// Thinning works on buckets aligned to UTC multiples of the granularity
// (time.Truncate): a point of granularity g is pruned when a newer point
// (higher Seq, any age) lies in the same g-bucket, so each bucket keeps its
// newest point. Because the buckets nest (1 h in 2 h in 4 h) and a point
// only ever moves to a coarser tier as it ages, the schedule is stable: a
// point pruned once would be pruned by every later run too, and running
// Select on the kept points later gives the same result as running it on
// all points. Point times are assumed to increase with Seq (they are tag
// times on one protected server); where they do not, Seq decides which
// point is newer.
type Retention struct {
	Window time.Duration
}

// Validate checks the window: it must be positive and at most
// MaxRetentionWindow.
func (r Retention) Validate() error {
	if r.Window <= 0 || r.Window > MaxRetentionWindow {
		return fmt.Errorf("retention window %v: want more than 0 and at most %v (15 days)", r.Window, MaxRetentionWindow)
	}
	return nil
}

// granularity returns the bucket size for a point of age a, 0 for a point
// that is kept whatever its neighbours.
func granularity(a time.Duration) time.Duration {
	switch {
	case a < retainAllAge:
		return 0
	case a < hourlyAge:
		return time.Hour
	case a < twoHourlyAge:
		return 2 * time.Hour
	}
	return 4 * time.Hour
}

// Select splits points (oldest first, ordered by Seq) into those to keep
// and those to prune at time now. Both outputs are oldest first. Select
// does not modify points.
func (r Retention) Select(points []Point, now time.Time) (keep, prune []Point) {
	if len(points) == 0 {
		return nil, nil
	}
	pruned := make([]bool, len(points))
	// Buckets that hold a newer point, per granularity (1 h, 2 h, 4 h).
	grains := [...]time.Duration{time.Hour, 2 * time.Hour, 4 * time.Hour}
	var seen [len(grains)]map[int64]bool
	for i := range seen {
		seen[i] = map[int64]bool{}
	}
	for i := len(points) - 1; i >= 0; i-- {
		p := points[i]
		age := now.Sub(p.Time)
		if i < len(points)-1 {
			if age > r.Window {
				pruned[i] = true
			} else if g := granularity(age); g != 0 {
				for k, gk := range grains {
					if gk == g && seen[k][bucket(p.Time, g)] {
						pruned[i] = true
					}
				}
			}
		}
		for k, g := range grains {
			seen[k][bucket(p.Time, g)] = true
		}
	}
	for i, p := range points {
		if pruned[i] {
			prune = append(prune, p)
		} else {
			keep = append(keep, p)
		}
	}
	return keep, prune
}

// bucket identifies the g-bucket of t: t truncated to a multiple of g since
// the zero time, which is aligned to UTC midnight.
func bucket(t time.Time, g time.Duration) int64 {
	return t.Truncate(g).Unix()
}
