package failover

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"lifeboat/pipeline"
	"lifeboat/targets"
)

// Which point a request names.
const (
	PointLatest          = "latest"           // apply everything spooled first, then the newest point
	PointLatestProcessed = "latest-processed" // the newest point already applied, no wait
)

// Request is the body of the recovery API's requests.
type Request struct {
	// Point is PointLatest, PointLatestProcessed or a point's seq; empty
	// with At. Default PointLatest.
	Point string `json:"point,omitempty"`
	// At picks the newest point at or before it instead.
	At *time.Time `json:"at,omitempty"`
	// Force lets change-point drop the failover volume's writes.
	Force bool `json:"force,omitempty"`
	// Planned asks the agent to stop writes, flush, tag and ship first
	// (failover start); Timeout bounds how long that may take.
	Planned bool          `json:"planned,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
	// AzureDisk also copies the failover point to a page blob Azure can
	// make a managed disk of (an azure:// target only).
	AzureDisk bool `json:"azure_disk,omitempty"`
	// To is the master target a reprotect replicates to; Verify compares
	// block hashes first, Full sends every block (a replaced disk).
	To     string `json:"to,omitempty"`
	Verify bool   `json:"verify,omitempty"`
	Full   bool   `json:"full,omitempty"`
	// NoWait makes a failback refuse, rather than wait, while reverse
	// replication is behind.
	NoWait bool `json:"no_wait,omitempty"`
}

// choose finds the point req names among sv's retained points; for
// PointLatest it applies the spool first (progress gets the bytes left).
func choose(ctx context.Context, sv pipeline.SiteVolume, req Request, progress func(int64)) (targets.Point, error) {
	name := volName(sv.Info())
	if req.At != nil && req.Point != "" {
		return targets.Point{}, fmt.Errorf("%w: give a point or a time, not both", pipeline.ErrPermanent)
	}
	var seq uint64
	switch req.Point {
	case "", PointLatest, PointLatestProcessed:
	default:
		n, err := strconv.ParseUint(req.Point, 10, 64)
		if err != nil || n == 0 {
			return targets.Point{}, fmt.Errorf("%w: point %q: want %s, %s or a point's seq (lifeboat points list --volume %s)",
				pipeline.ErrPermanent, req.Point, PointLatest, PointLatestProcessed, name)
		}
		seq = n
	}
	if req.At == nil && (req.Point == "" || req.Point == PointLatest) {
		if err := sv.Drain(ctx, progress); err != nil {
			return targets.Point{}, err
		}
	}
	points, err := sv.Replica().Points(ctx)
	if err != nil {
		return targets.Point{}, fmt.Errorf("list the points of %s: %w", name, err)
	}
	if len(points) == 0 {
		return targets.Point{}, fmt.Errorf("%w: volume %s has no recovery point yet (is its initial replication done? lifeboat volume list)",
			targets.ErrNotFound, name)
	}
	switch {
	case req.At != nil:
		for i := len(points) - 1; i >= 0; i-- {
			if !points[i].Time.After(*req.At) {
				return points[i], nil
			}
		}
		return targets.Point{}, fmt.Errorf("%w: no recovery point of %s at or before %s: the oldest retained is %d at %s",
			targets.ErrNotFound, name, req.At.UTC().Format(time.RFC3339), points[0].Seq, points[0].Time.UTC().Format(time.RFC3339))
	case seq != 0:
		for _, p := range points {
			if p.Seq == seq {
				return p, nil
			}
		}
		return targets.Point{}, fmt.Errorf("%w: recovery point %d of %s is not retained (pruned, or never taken); lifeboat points list --volume %s shows the retained ones",
			targets.ErrNotFound, seq, name, name)
	}
	return points[len(points)-1], nil
}
