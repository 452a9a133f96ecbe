package failover

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"lifeboat/pipeline"
	"lifeboat/targets"
)

// DefaultPlannedTimeout bounds how long a planned failover waits for the
// agent to stop writes, flush, tag and ship.
const DefaultPlannedTimeout = 2 * time.Minute

// PlannedFailover implements pipeline.Holds: the token volume id's agent
// is asked to tag with, "" when no planned failover waits for it.
func (m *Manager) PlannedFailover(id string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.plans[id]
}

// planned asks sv's agent (through the volume's status, which it polls) to
// stop writes, flush, tag and ship, waits until that tag is a point here,
// and fails over to exactly it. When the agent does not complete within
// req.Timeout nothing changes: the request is withdrawn (the agent takes
// writes again) and the error says so.
func (m *Manager) planned(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if req.Point != "" || req.At != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: a planned failover goes to the agent's last write; it takes no --point or --at", pipeline.ErrPermanent)
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = DefaultPlannedTimeout
	}
	token := rand.Text()
	m.mu.Lock()
	m.plans[info.ID] = token
	m.mu.Unlock()
	withdraw := func() {
		m.mu.Lock()
		delete(m.plans, info.ID)
		m.mu.Unlock()
	}
	m.step(info, "planned failover: waiting for the agent of %s to stop writes, flush, tag and ship (up to %v)", volName(info), timeout)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	p, err := waitPlannedPoint(wctx, sv, token)
	cancel()
	if err != nil {
		withdraw()
		if ctx.Err() == nil {
			return pipeline.RecoveryState{}, fmt.Errorf("%w: the agent of %s did not stop, flush and ship its writes within %v, so nothing changed "+
				"(the request is withdrawn: the agent takes writes again when it next hears from the site, every 2 s while it is connected): is it running and connected, and is its volume replicating (lifeboat status on %s)? Retry, or fail over without --planned",
				pipeline.ErrRecoveryState, volName(info), timeout, info.Machine)
		}
		return pipeline.RecoveryState{}, err
	}
	_, unfence := m.fence(sv, pipeline.RecoveryState{Volume: info, Kind: pipeline.RecoveryFailover, Since: m.now().UTC(),
		Point: pipeline.APIPoint(p), Planned: true},
		func() { delete(m.plans, info.ID) }) // the agent sees the failover from now on, and stays read-only
	st, err := m.open(ctx, sv, pipeline.RecoveryFailover, p, req.AzureDisk)
	if err != nil {
		unfence()
		return pipeline.RecoveryState{}, err
	}
	return st, nil
}

// waitPlannedPoint waits until the point tagged for token is applied.
func waitPlannedPoint(ctx context.Context, sv pipeline.SiteVolume, token string) (targets.Point, error) {
	for {
		points, err := sv.Replica().Points(ctx)
		if err == nil {
			for i := len(points) - 1; i >= 0; i-- {
				if t, ok := pipeline.IsPlannedTag(points[i].Name); ok && t == token {
					return points[i], nil
				}
			}
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return targets.Point{}, ctx.Err()
		case <-t.C:
		}
	}
}
