package failover

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/failback"
	"lifeboat/pipeline"
	"lifeboat/targets"
	"lifeboat/tracker"
)

// reverseMaxBackoff bounds the reverse shipper's wait between tries: a
// master target back after a restart is found within it.
const reverseMaxBackoff = 5 * time.Second

// reverse is a failover volume's running reverse replication: a shipper
// of its journal to the master target, as an agent ships forward.
type reverse struct {
	sh        *pipeline.Shipper
	client    *failback.Client
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	firstSync atomic.Bool // the first sync's resync has not finished: ResyncSkip applies
}

// onlyFirstSync limits skip to the first sync: a later resync (after the
// journal quota) copies its dirty regions whole, since the primary's
// hashes are old by then.
func (rv *reverse) onlyFirstSync(skip func(int64, []byte) bool) func(int64, []byte) bool {
	return func(off int64, b []byte) bool { return rv.firstSync.Load() && skip(off, b) }
}

func (rv *reverse) stop() {
	rv.cancel()
	rv.wg.Wait()
}

// startReverse ships r's failover volume to the master target until the
// failback or Close.
func (m *Manager) startReverse(r *recovery, rv *reverse, client *failback.Client) {
	m.mu.Lock()
	st := r.state
	m.mu.Unlock()
	sh := pipeline.NewShipper(r.vol, st.Volume.Name, client.URL, client.HTTP)
	sh.BaseSeq = st.Reprotect.BaseSeq
	sh.TagInterval = m.ReverseTagInterval
	if f := m.ReverseTagIntervalFor; f != nil {
		if d, ok := f(st.Volume.Machine, st.Volume.Name); ok {
			sh.TagInterval = d
		}
	}
	if sh.TagInterval == 0 {
		sh.TagInterval = DefaultReverseTagInterval
	}
	sh.MaxBackoff = reverseMaxBackoff
	sh.Logger = m.logger().With("reverse_to", client.URL)
	ctx, cancel := context.WithCancel(context.Background())
	rv.sh, rv.client, rv.cancel = sh, client, cancel
	rv.wg.Add(2)
	go func() {
		defer rv.wg.Done()
		if err := sh.Run(ctx); err != nil && ctx.Err() == nil {
			m.logger().Error("reverse replication stopped", "volume", volName(st.Volume), "err", err)
		}
	}()
	go func() { // the first sync ends when the tracker needs no resync
		defer rv.wg.Done()
		for rv.firstSync.Load() {
			if r.vol.Status().Resync == "" {
				rv.firstSync.Store(false)
				m.logger().Info("reprotect: first sync journaled; reverse replication goes on from the failover volume's writes",
					"volume", volName(st.Volume))
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	r.reverse.Store(rv)
}

// resumeReverse starts a reprotected failover volume's reverse
// replication again after a restart. A resync that had not finished (the
// first sync, or the one an unclean stop needs) goes on from the dirty
// regions left, limited to the candidates of the first sync, recomputed:
// they include every block written on the failover volume, before the
// reprotect and since. With Verify those are compared with the primary
// disk again first. When the master target cannot be asked, the dirty
// regions are copied whole.
func (m *Manager) resumeReverse(ctx context.Context, r *recovery) error {
	st := m.status(r)
	client, err := m.masterClient(st.Reprotect.To)
	if err != nil {
		return err
	}
	rv := &reverse{}
	if r.vol.Status().Resync != "" {
		// The resync copies every dirty region: the journal left
		// unacknowledged is dropped rather than shipped as well.
		base, err := m.dropJournal(r, nil, "reverse replication resumed after an unclean stop")
		if err != nil {
			return err
		}
		st.Reprotect.BaseSeq = base
		rv.firstSync.Store(true)
	}
	if rv.firstSync.Load() && !st.Reprotect.Full {
		skip, err := m.resumeSkip(ctx, r, client, st)
		if err == nil {
			r.vol.ResyncSkip = rv.onlyFirstSync(skip)
		} else {
			m.logger().Warn("reprotect: what may differ from the primary could not be found again; the resync copies its dirty regions whole",
				"volume", volName(st.Volume), "err", err)
		}
	}
	m.startReverse(r, rv, client)
	m.logger().Info("reverse replication resumed", "volume", volName(st.Volume), "to", st.Reprotect.To, "resync", rv.firstSync.Load())
	return nil
}

// resumeSkip is resumeReverse's ResyncSkip: the first sync's candidates
// found again, and with Verify, of those still dirty, the blocks the
// primary disk has.
func (m *Manager) resumeSkip(ctx context.Context, r *recovery, client *failback.Client, st pipeline.RecoveryState) (func(int64, []byte) bool, error) {
	sv, err := m.Site.Volume(ctx, st.Volume.ID)
	if err != nil {
		return nil, err
	}
	pv, err := client.Volume(ctx, st.Volume.ID)
	if err != nil {
		return nil, err
	}
	cands, err := m.candidates(ctx, sv, r, pv, false)
	if err != nil {
		return nil, err
	}
	if !st.Reprotect.Verify {
		return m.skipper(ctx, client, r, st.Volume, cands, false)
	}
	left := newBlockSet(st.Volume.Size)
	r.vol.Bitmap().DirtyRanges(func(off, n int64) error {
		left.add(targets.Range{Off: off, Len: n})
		return nil
	})
	for i := range left {
		left[i] &= cands.set[i]
	}
	c := candidateSet{set: left, ranges: left.ranges(st.Volume.Size)}
	return m.skipper(ctx, client, r, st.Volume, c, true)
}

// dropJournal makes r's failover volume resync its dirty regions and
// ranges in a new generation, drops its unshipped journal, and records the
// seq it ends at as the reprotect's BaseSeq.
func (m *Manager) dropJournal(r *recovery, ranges []tracker.Range, reason string) (uint64, error) {
	base, err := r.vol.ResyncRanges(ranges, reason)
	if err != nil {
		return 0, err
	}
	for _, s := range r.vol.Segments() {
		if s.LastSeq > base {
			break
		}
		if err := r.vol.Ack(s.FirstSeq); err != nil {
			return 0, fmt.Errorf("drop the failover journal: %w", err)
		}
	}
	m.mu.Lock()
	rp := *r.state.Reprotect
	rp.BaseSeq = base
	r.state.Reprotect = &rp
	m.mu.Unlock()
	return base, m.put(r.state.Volume.ID, pipeline.RecoveryFailover, r)
}
