package failover

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	"lifeboat/failback"
	"lifeboat/hrl"
	"lifeboat/pipeline"
	"lifeboat/targets"
)

// failbackChunk is how much of the failover volume a failback reads at
// once: hashed for the equality check, applied to the replica.
const failbackChunk = 1 << 20

// rebaseBatch is how much a failback applies to the site's replica in one
// Apply.
const rebaseBatch = 16 << 20

// Failback ends a reprotected failover: the failover volume becomes
// read-only, its last writes reach the primary disk behind a tag, the
// primary disk is checked equal to it (block hashes), the site's replica
// is made equal to it (its changes since the failover point are applied,
// and a point is taken), the primary volume is handed back to its agent
// in a new generation with no initial replication, and the failover
// volume is removed. With req.NoWait it refuses while reverse replication
// is behind instead of waiting. Run again after a crash, it goes on with
// the tag and journal position it chose.
func (m *Manager) Failback(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
	info := sv.Info()
	if err := m.begin(ctx, info.ID); err != nil {
		return pipeline.RecoveryState{}, err
	}
	defer m.end(info.ID)
	r := m.get(info.ID, pipeline.RecoveryFailover)
	if r == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: volume %s is not failed over; there is nothing to fail back", pipeline.ErrRecoveryState, volName(info))
	}
	st := m.status(r)
	if st.Reprotect == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: %s is not reprotected: failback needs the primary disk up to date first "+
			"(lifeboat reprotect %s --to https://MASTER-TARGET:%s)", pipeline.ErrRecoveryState, volName(info), volName(info), failback.DefaultAddr[1:])
	}
	rv := r.reverse.Load()
	if rv == nil || r.vol == nil {
		return pipeline.RecoveryState{}, fmt.Errorf("%w: the reverse replication of %s is not running (%s); see the server's log",
			pipeline.ErrRecoveryState, volName(info), st.Error)
	}
	plan := st.Reprotect.Failback
	if plan == nil {
		if lag := behind(st); lag != "" && req.NoWait {
			return pipeline.RecoveryState{}, fmt.Errorf("%w: reverse replication of %s is behind (%s); run failback without --no-wait to wait for it",
				pipeline.ErrRecoveryState, volName(info), lag)
		}
		var err error
		if plan, err = m.planFailback(ctx, sv, r, rv); err != nil {
			return pipeline.RecoveryState{}, err
		}
	} else if err := r.vol.SetReadOnly("failing back to the primary site"); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := m.waitApplied(ctx, info, rv, plan.TagSeq); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := m.checkEqual(ctx, info, r, rv.client); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := m.rebaseReplica(ctx, sv, r, plan); err != nil {
		return pipeline.RecoveryState{}, err
	}
	m.step(info, "failback: handing the primary volume back to its agent")
	if _, err := rv.client.Adopt(ctx, info.ID, failback.AdoptRequest{Generation: plan.Generation, NextSeq: plan.Seq + 1, TagSeq: plan.TagSeq}); err != nil {
		return pipeline.RecoveryState{}, fmt.Errorf("failback %s: %w", volName(info), err)
	}
	done := m.status(r)
	if err := m.unserve(ctx, r, false); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := r.close(); err != nil {
		m.logger().Warn("closing the failover volume after the failback", "volume", volName(info), "err", err)
	}
	if err := m.put(info.ID, pipeline.RecoveryFailover, nil); err != nil {
		return pipeline.RecoveryState{}, err
	}
	if err := removeDir(r.dir); err != nil {
		m.logger().Warn("could not delete the failover volume's files", "dir", r.dir, "err", err)
	}
	m.logger().Info("failback done: start the agent of the primary volume; forward replication resumes with no initial replication",
		"volume", volName(info), "point", plan.Seq, "generation", plan.Generation)
	done.Reprotect.Shipper = nil
	return done, nil
}

// behind says how far reverse replication is behind, "" when it is not.
func behind(st pipeline.RecoveryState) string {
	sh := st.Reprotect.Shipper
	switch {
	case sh == nil:
		return "not started"
	case sh.Resync != nil:
		return fmt.Sprintf("first sync %s of %s", mib(sh.Resync.Done), mib(sh.Resync.Total))
	case sh.Tracker.Resync != "":
		return "first sync not finished"
	case sh.Tracker.NextSeq-1 > sh.Tracker.AckedSeq:
		return fmt.Sprintf("records %d..%d (%s of journal) not acknowledged by the master target",
			sh.Tracker.AckedSeq+1, sh.Tracker.NextSeq-1, mib(sh.Tracker.JournalBytes))
	}
	return ""
}

// planFailback stops writes, waits for the first sync, tags, and records
// the tag and the replica's new journal position.
func (m *Manager) planFailback(ctx context.Context, sv pipeline.SiteVolume, r *recovery, rv *reverse) (*pipeline.FailbackPlan, error) {
	info := sv.Info()
	if err := r.vol.SetReadOnly("failing back to the primary site"); err != nil {
		return nil, err
	}
	for {
		st := m.status(r)
		lag := behind(st)
		if st.Reprotect.Shipper != nil && st.Reprotect.Shipper.Tracker.Resync == "" {
			break
		}
		m.step(info, "failback: waiting for the reprotect's first sync: %s", lag)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := r.vol.Flush(); err != nil {
		return nil, err
	}
	tag, err := r.vol.Tag(hrl.TagCrash, "failback")
	if err != nil {
		return nil, fmt.Errorf("failback %s: tag the failover volume: %w", volName(info), err)
	}
	if err := r.vol.Seal(); err != nil {
		return nil, err
	}
	rs, err := sv.Replica().State(ctx)
	if err != nil {
		return nil, err
	}
	plan := &pipeline.FailbackPlan{TagSeq: tag, Generation: rs.Generation + 1, Seq: rs.Seq + 1}
	m.mu.Lock()
	rp := *r.state.Reprotect
	rp.Failback = plan
	r.state.Reprotect = &rp
	m.mu.Unlock()
	if err := m.put(info.ID, pipeline.RecoveryFailover, r); err != nil {
		return nil, err
	}
	return plan, nil
}

// waitApplied waits until the master target's disk has seq tag.
func (m *Manager) waitApplied(ctx context.Context, info targets.VolumeInfo, rv *reverse, tag uint64) error {
	for {
		pv, err := rv.client.Volume(ctx, info.ID)
		if err == nil && pv.AppliedSeq >= tag {
			return nil
		}
		sh := rv.sh.Status()
		if err != nil {
			m.step(info, "failback: waiting for the master target (%v)", err)
		} else {
			m.step(info, "failback: waiting for the primary disk to apply seq %d: shipped up to %d, applied %d", tag, sh.AckedSeq, pv.AppliedSeq)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkEqual compares the primary disk with the failover volume by the
// hashes of their 1 MiB blocks.
func (m *Manager) checkEqual(ctx context.Context, info targets.VolumeInfo, r *recovery, client *failback.Client) error {
	m.step(info, "failback: comparing the primary disk with the failover volume (block hashes)")
	// Both sides hash at once: the master target its disk, the site the
	// failover volume.
	type answer struct {
		hashes []byte
		err    error
	}
	remoteCh := make(chan answer, 1)
	go func() {
		h, err := client.Hashes(ctx, info.ID, failback.HashRequest{Block: failbackChunk, Ranges: []targets.Range{{Off: 0, Len: info.Size}}})
		remoteCh <- answer{h, err}
	}()
	local := make([]byte, 0, (info.Size+failbackChunk-1)/failbackChunk*failback.HashSize)
	buf := make([]byte, failbackChunk)
	var lerr error
	for off := int64(0); off < info.Size && lerr == nil; off += failbackChunk {
		b := buf[:min(failbackChunk, info.Size-off)]
		if _, lerr = r.vol.ReadAt(b, off); lerr == nil {
			sum := sha256.Sum256(b)
			local = append(local, sum[:failback.HashSize]...)
		}
	}
	remote := <-remoteCh
	if remote.err != nil {
		return fmt.Errorf("failback %s: %w", volName(info), remote.err)
	}
	if lerr != nil {
		return fmt.Errorf("failback %s: read the failover volume: %w", volName(info), lerr)
	}
	var differ []int64
	for i := 0; i*failback.HashSize < len(local); i++ {
		if !bytes.Equal(local[i*failback.HashSize:(i+1)*failback.HashSize], remote.hashes[i*failback.HashSize:(i+1)*failback.HashSize]) {
			differ = append(differ, int64(i)*failbackChunk)
		}
	}
	if len(differ) > 0 {
		return fmt.Errorf("%w: the primary disk differs from the failover volume in %d MiB blocks (first at %d) after reverse replication; "+
			"nothing was switched: see the master target's log", pipeline.ErrRecoveryState, len(differ), differ[0])
	}
	return nil
}

// rebaseReplica applies to the site's replica what the failover volume
// changed since its point (and reverts what the site applied after it),
// then takes the point plan names, from which the agent goes on.
func (m *Manager) rebaseReplica(ctx context.Context, sv pipeline.SiteVolume, r *recovery, plan *pipeline.FailbackPlan) error {
	info := sv.Info()
	changed, err := changedSince(ctx, sv, r.state.Point.Seq)
	if err != nil {
		return err
	}
	set := newBlockSet(info.Size)
	for _, rg := range append(r.view.WrittenRanges(), changed...) {
		set.add(rg)
	}
	ranges := set.ranges(info.Size)
	m.logger().Info("failback: what the site's replica gets from the failover volume", "volume", volName(info),
		"written_at_site", sumRanges(r.view.WrittenRanges()), "applied_after_point", sumRanges(changed))
	var total, done int64
	for _, rg := range ranges {
		total += rg.Len
	}
	return sv.Rebase(ctx, func(rep targets.Replica) (targets.Point, error) {
		p := targets.Point{Seq: plan.Seq, Generation: plan.Generation, Kind: hrl.TagCrash, Name: "failback", Time: m.now().UTC()}
		if pts, err := rep.Points(ctx); err == nil {
			for _, q := range pts {
				if q.Seq == p.Seq && q.Generation == p.Generation {
					return q, nil // a failback run again after a crash
				}
			}
		}
		// Extents are applied rebaseBatch bytes at a time: the file target
		// syncs its undo log once per Apply.
		var batch []targets.Extent
		var batched int64
		apply := func() error {
			if len(batch) == 0 {
				return nil
			}
			if err := rep.Apply(ctx, batch); err != nil {
				return fmt.Errorf("failback %s: apply to the replica: %w", volName(info), err)
			}
			done += batched
			m.stepPct(info, 100*float64(done)/float64(max(total, 1)),
				"failback: making the site's replica equal to the failover volume: %s of %s", mib(done), mib(total))
			batch, batched = nil, 0
			return nil
		}
		for _, rg := range ranges {
			for off := rg.Off; off < rg.Off+rg.Len; off += failbackChunk {
				b := make([]byte, min(failbackChunk, rg.Off+rg.Len-off))
				if _, err := r.vol.ReadAt(b, off); err != nil {
					return p, err
				}
				batch = append(batch, targets.Extent{Off: off, Len: int64(len(b)), Data: b})
				if batched += int64(len(b)); batched >= rebaseBatch {
					if err := apply(); err != nil {
						return p, err
					}
				}
			}
		}
		if err := apply(); err != nil {
			return p, err
		}
		if err := rep.CreatePoint(ctx, p); err != nil {
			return p, fmt.Errorf("failback %s: point on the replica: %w", volName(info), err)
		}
		return p, nil
	})
}

func sumRanges(rs []targets.Range) int64 {
	var n int64
	for _, r := range rs {
		n += r.Len
	}
	return n
}
