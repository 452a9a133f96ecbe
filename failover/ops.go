package failover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"lifeboat/pipeline"
	"lifeboat/targets"
)

// StartTest starts a test failover of sv: the point req names, served as
// a writable view whose writes stay in its overlay. Replication of the
// volume goes on; its point is kept until Cleanup.
func (m *Manager) StartTest(ctx context.Context, sv pipeline.SiteVolume, req Request, progress func(int64)) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if req.Planned || req.Force || req.AzureDisk {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: --planned, --force and --azure-disk are for failover, not test failover", pipeline.ErrPermanent)
	}
	if err := m.begin(ctx, info.ID); err != nil {
		return pipeline.RecoveryState{}, err
	}
	defer m.end(info.ID)
	if r := m.get(info.ID, pipeline.RecoveryTest); r != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: a test failover of %s is running since %s (point %d); "+
			"lifeboat test-failover cleanup %s ends it", pipeline.ErrRecoveryState, volName(info),
			r.state.Since.UTC().Format(time.RFC3339), r.state.Point.Seq, volName(info))
	}
	p, err := choose(ctx, sv, req, progress)
	if err != nil {
		return pipeline.RecoveryState{}, err
	}
	return m.open(ctx, sv, pipeline.RecoveryTest, p, false)
}

// open makes, serves and records a recovery volume of kind over point p,
// in a directory of its own (a change of point keeps the old one until the
// new one is recorded). The point is pinned first, so retention cannot
// take it meanwhile; on an error nothing is left behind and the recovery
// recorded before (a fence, the failover whose point changes) is again.
func (m *Manager) open(ctx context.Context, sv pipeline.SiteVolume, kind string, p targets.Point, disk bool) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if m.NBD == nil && m.FUSE == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: this site serves recovery volumes neither over NBD nor as files: "+
			"start lifeboat server with --recovery-nbd ADDR or --fuse-mount DIR", pipeline.ErrRecoveryState)
	}
	dir := filepath.Join(m.Dir, fmt.Sprintf("%s.%s.%d", info.ID, kind, time.Now().UnixNano()))
	r := &recovery{dir: dir, state: pipeline.RecoveryState{
		Volume: info, Kind: kind, Point: pipeline.APIPoint(p), Since: m.now().UTC(), Export: exportName(info, kind)}}
	m.where(r)
	if existing := m.get(info.ID, kind); existing != nil {
		m.mu.Lock()
		r.state.Since, r.state.Planned = existing.state.Since, existing.state.Planned // a change of point
		m.mu.Unlock()
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("recovery volume directory: %w", err)
	}
	m.mu.Lock()
	prev := m.recs[key{info.ID, kind}] // a fence, or the failover whose point changes
	m.recs[key{info.ID, kind}] = r     // pinned (and, for a failover, fenced) from here on
	m.mu.Unlock()
	err := m.openView(ctx, sv, r)
	if errors.Is(err, targets.ErrNotFound) {
		err = fmt.Errorf("%w (pruned while it was being opened; pick another)", err)
	}
	if err == nil && disk {
		var u string
		if u, err = m.cloneDisk(ctx, sv, r); err != nil {
			r.close()
		}
		m.mu.Lock()
		r.state.AzureDisk = u
		m.mu.Unlock()
	}
	if err == nil {
		if err = m.serve(r); err != nil {
			r.close()
		}
	}
	if err == nil {
		if err = m.put(info.ID, kind, r); err != nil {
			m.unserve(context.Background(), r, false)
			r.close()
		}
	}
	if err != nil {
		m.mu.Lock()
		if prev != nil {
			m.recs[key{info.ID, kind}] = prev
		} else {
			delete(m.recs, key{info.ID, kind})
		}
		m.mu.Unlock()
		removeDir(r.dir)
		return pipeline.RecoveryState{}, err
	}
	m.logger().Info("recovery volume started", "volume", volName(info), "kind", kind, "point", p.Seq,
		"point_time", p.Time, "export", r.state.Export)
	return m.status(r), nil
}

// Cleanup ends the test failover of sv: its export and file go away (a
// loop device over the file must be detached first) and its overlay is
// deleted. The replica and the points never saw its writes.
func (m *Manager) Cleanup(ctx context.Context, sv pipeline.SiteVolume) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if err := m.begin(ctx, info.ID); err != nil {
		return pipeline.RecoveryState{}, err
	}
	defer m.end(info.ID)
	r := m.get(info.ID, pipeline.RecoveryTest)
	if r == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: volume %s has no test failover to clean up (lifeboat test-failover list)",
			pipeline.ErrRecoveryState, volName(info))
	}
	st := m.status(r)
	if err := m.remove(ctx, r); err != nil {
		return st, err
	}
	m.logger().Info("test failover cleaned up", "volume", volName(info), "point", st.Point.Seq, "written_bytes", st.Written)
	return st, nil
}

// remove stops serving r, closes it, deletes its files and forgets it.
func (m *Manager) remove(ctx context.Context, r *recovery) error {
	if err := m.unserve(ctx, r, false); err != nil {
		return err
	}
	if err := r.close(); err != nil {
		m.logger().Warn("closing a recovery volume before deleting it", "volume", volName(r.state.Volume), "err", err)
	}
	if err := removeDir(r.dir); err != nil {
		return err
	}
	return m.put(r.state.Volume.ID, r.state.Kind, nil)
}

// removeDir deletes a recovery volume's directory: its overlay, its
// journal (a failover's) and the directory itself. A missing one is no
// error.
func removeDir(dir string) error {
	if err := RemoveOverlay(filepath.Join(dir, "overlay")); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, "journal")); err != nil {
		return fmt.Errorf("remove the failover volume's journal: %w", err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the recovery volume's directory: %w", err)
	}
	return nil
}
