package failover

import (
	"context"
	"fmt"
	"time"

	"lifeboat/pipeline"
)

// StartFailover fails sv over to the point req names: from then on the
// site refuses the volume's segments (its agent, when alive, is told and
// keeps tracking its changes for the failback), and the failover volume
// is served: a view of the point whose writes go through a tracker
// volume, journaled and dirty-tracked. The point is kept until the
// failback.
func (m *Manager) StartFailover(ctx context.Context, sv pipeline.SiteVolume, req Request, progress func(int64)) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if req.Force {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: --force is for change-point", pipeline.ErrPermanent)
	}
	if err := m.checkDisk(req); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := m.begin(ctx, info.ID); err != nil {
		return pipeline.RecoveryState{}, err
	}
	defer m.end(info.ID)
	if r := m.get(info.ID, pipeline.RecoveryFailover); r != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: volume %s is already failed over (since %s, point %d)",
			pipeline.ErrRecoveryState, volName(info), r.state.Since.UTC().Format(time.RFC3339), r.state.Point.Seq)
	}
	if req.Planned {
		return m.planned(ctx, sv, req)
	}
	// Fence first: no segment is taken after this, so "latest" is the
	// newest point the site will have of this volume.
	fence, unfence := m.fence(sv, pipeline.RecoveryState{Volume: info, Kind: pipeline.RecoveryFailover, Since: m.now().UTC()}, nil)
	p, err := choose(ctx, sv, req, progress)
	if err != nil {
		unfence()
		return pipeline.RecoveryState{}, err
	}
	m.mu.Lock()
	fence.state.Point = pipeline.APIPoint(p) // pinned while it opens
	m.mu.Unlock()
	st, err := m.open(ctx, sv, pipeline.RecoveryFailover, p, req.AzureDisk)
	if err != nil {
		unfence()
		return pipeline.RecoveryState{}, err
	}
	return st, nil
}

// ChangePoint moves an uncommitted failover to another point. The failover
// volume's writes are dropped, so it needs req.Force when there are any
// (or when the failover volume could not be served again after a restart:
// its writes cannot be counted). The old volume's files stay until the new
// one is recorded; if the new one fails, the old one is served again.
func (m *Manager) ChangePoint(ctx context.Context, sv pipeline.SiteVolume, req Request, progress func(int64)) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if req.Planned {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: --planned is for failover start", pipeline.ErrPermanent)
	}
	if err := m.checkDisk(req); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := m.begin(ctx, info.ID); err != nil {
		return pipeline.RecoveryState{}, err
	}
	defer m.end(info.ID)
	r := m.get(info.ID, pipeline.RecoveryFailover)
	if r == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: volume %s is not failed over (lifeboat failover start %s)",
			pipeline.ErrRecoveryState, volName(info), volName(info))
	}
	st := m.status(r)
	if st.Committed {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the failover of %s to point %d is committed; its point can no longer change",
			pipeline.ErrRecoveryState, volName(info), st.Point.Seq)
	}
	if st.Error != "" && !req.Force {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the failover volume of %s could not be served again (%s); "+
			"a new point replaces it and whatever was written to it: add --force to go on", pipeline.ErrRecoveryState, volName(info), st.Error)
	}
	if st.Written > 0 && !req.Force {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the failover volume of %s has %d bytes written since %s; a new point drops them: add --force to go on",
			pipeline.ErrRecoveryState, volName(info), st.Written, st.Since.UTC().Format(time.RFC3339))
	}
	p, err := choose(ctx, sv, req, progress)
	if err != nil {
		return pipeline.RecoveryState{}, err
	}
	// The old point stays pinned (r is recorded) until the new one is.
	if err := m.unserve(ctx, r, false); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := r.close(); err != nil {
		m.logger().Warn("closing the failover volume before a change of point", "volume", volName(info), "err", err)
	}
	nst, err := m.open(ctx, sv, pipeline.RecoveryFailover, p, req.AzureDisk)
	if err != nil {
		if st.Error == "" { // serve the old point again, with its writes: nothing changed
			m.setErr(r, m.reopen(ctx, r))
		}
		return pipeline.RecoveryState{}, err
	}
	if err := removeDir(r.dir); err != nil {
		m.logger().Warn("could not delete the old failover volume's files", "dir", r.dir, "err", err)
	}
	m.logger().Info("failover point changed", "volume", volName(info), "from", st.Point.Seq, "to", p.Seq)
	return nst, nil
}

// Commit makes the failover of sv final: its point can no longer change.
func (m *Manager) Commit(ctx context.Context, sv pipeline.SiteVolume) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if err := m.begin(ctx, info.ID); err != nil {
		return pipeline.RecoveryState{}, err
	}
	defer m.end(info.ID)
	r := m.get(info.ID, pipeline.RecoveryFailover)
	if r == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: volume %s is not failed over; nothing to commit",
			pipeline.ErrRecoveryState, volName(info))
	}
	st := m.status(r)
	if st.Committed {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the failover of %s to point %d is already committed",
			pipeline.ErrRecoveryState, volName(info), st.Point.Seq)
	}
	if st.Error != "" {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the failover volume of %s could not be served again (%s): "+
			"change its point (failover change-point --force) before you commit", pipeline.ErrRecoveryState, volName(info), st.Error)
	}
	m.mu.Lock()
	r.state.Committed = true
	m.mu.Unlock()
	if err := m.put(info.ID, pipeline.RecoveryFailover, r); err != nil {
		m.mu.Lock()
		r.state.Committed = false
		m.mu.Unlock()
		return pipeline.RecoveryState{}, err
	}
	m.logger().Info("failover committed", "volume", volName(info), "point", st.Point.Seq)
	return m.status(r), nil
}

// fence records st as the volume's failover while no segment of it is
// being received: every segment after it is refused. also runs in the same
// critical section. The returned function removes the fence unless
// something replaced it.
func (m *Manager) fence(sv pipeline.SiteVolume, st pipeline.RecoveryState, also func()) (*recovery, func()) {
	f := &recovery{state: st}
	k := key{st.Volume.ID, pipeline.RecoveryFailover}
	sv.Fence(func() {
		m.mu.Lock()
		m.recs[k] = f
		if also != nil {
			also()
		}
		m.mu.Unlock()
	})
	return f, func() {
		m.mu.Lock()
		if m.recs[k] == f {
			delete(m.recs, k)
		}
		m.mu.Unlock()
	}
}
