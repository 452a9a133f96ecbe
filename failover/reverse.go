package failover

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/failback"
	"lifeboat/pipeline"
	"lifeboat/targets"
)

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
	if sh.TagInterval == 0 {
		sh.TagInterval = DefaultReverseTagInterval
	}
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
// replication again after a restart. A first sync that had not finished
// goes on from the dirty regions left; with Verify they are compared
// with the primary disk again first.
func (m *Manager) resumeReverse(ctx context.Context, r *recovery) error {
	st := m.status(r)
	client, err := m.masterClient(st.Reprotect.To)
	if err != nil {
		return err
	}
	rv := &reverse{}
	if r.vol.Status().Resync != "" {
		rv.firstSync.Store(true)
		if st.Reprotect.Verify {
			var left []targets.Range
			r.vol.Bitmap().DirtyRanges(func(off, n int64) error {
				left = append(left, targets.Range{Off: off, Len: n})
				return nil
			})
			set := newBlockSet(st.Volume.Size)
			for _, rg := range left {
				set.add(rg)
			}
			c := candidateSet{set: set, ranges: set.ranges(st.Volume.Size)}
			skip, err := m.skipper(ctx, client, st.Volume, c, true)
			if err == nil {
				r.vol.ResyncSkip = rv.onlyFirstSync(skip)
			} else {
				m.logger().Warn("reprotect: the primary's block hashes could not be read; the rest of the first sync copies its dirty regions whole",
					"volume", volName(st.Volume), "err", err)
			}
		}
	}
	m.startReverse(r, rv, client)
	m.logger().Info("reverse replication resumed", "volume", volName(st.Volume), "to", st.Reprotect.To, "first_sync", rv.firstSync.Load())
	return nil
}
