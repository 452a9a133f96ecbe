package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// volume is one replicated volume on the process server. Lock order:
// recvMu, then mu (a receive holds recvMu throughout, and takes mu to read
// and update the spooled and applied state).
type volume struct {
	info targets.VolumeInfo // ID, Name, Size, BlockSize fixed while open; Machine guarded by mu
	rep  targets.Replica
	srv  *Server
	wake chan struct{}

	recvMu   sync.Mutex // one segment checked and stored at a time
	recvCond sync.Cond  // on recvMu: an upload ended (uploads changed)
	uploads  int        // under recvMu: uploads of this volume in progress
	waiting  int        // under recvMu: of them, waiting for a segment they follow

	mu         sync.Mutex
	spooledGen uint64
	spooledSeq uint64
	pending    []spooledSeg // spooled, not yet applied, in seq order
	applied    targets.State
	applyErr   string
	// hasPoint: the replica has (or may have) a recovery point. Set when
	// the volume is loaded and before every point is created, never
	// cleared; while false, segments may be applied directly (direct.go).
	hasPoint bool
	direct   int64 // segments applied directly since the volume was opened

	received     atomic.Int64 // segment bytes stored since opened (metrics.go)
	appliedBytes atomic.Int64 // data bytes applied since opened (metrics.go)

	replay hrl.SegmentReplay // the applier's, reused
	sink   applySink
}

// infoNow returns the volume's info; its machine may change while it is
// open (an admin's reassignment).
func (v *volume) infoNow() targets.VolumeInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

func (v *volume) spooled() (gen, seq uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.spooledGen, v.spooledSeq
}

func (v *volume) push(seg spooledSeg) {
	v.mu.Lock()
	v.pending = append(v.pending, seg)
	v.spooledGen, v.spooledSeq = seg.generation, seg.last
	v.mu.Unlock()
	v.kick()
}

func (v *volume) kick() {
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

func (v *volume) status() VolumeStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := VolumeStatus{Info: v.info, SpooledGeneration: v.spooledGen, SpooledSeq: v.spooledSeq,
		AppliedGeneration: v.applied.Generation, AppliedSeq: v.applied.Seq, ApplyError: v.applyErr,
		DirectApplied: v.direct, Throttled: v.srv.throttle.current(), SegmentsInFlight: MaxSegmentsInFlight}
	for _, s := range v.pending {
		st.SpoolBytes += s.size
	}
	return st
}

// applier applies spooled segments in order until ctx ends. A failed apply
// (target down, disk full) is retried with backoff; the segment stays
// spooled, so nothing is lost while the target is away. After a storage
// failure the replica is reopened first (recover.go).
func (v *volume) applier(ctx context.Context) {
	defer v.srv.wg.Done()
	log := v.srv.logger().With("volume", v.info.Name)
	backoff := time.Duration(0)
	for {
		v.mu.Lock()
		var seg spooledSeg
		ok := len(v.pending) > 0
		if ok {
			seg = v.pending[0]
		}
		v.mu.Unlock()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-v.wake:
			}
			continue
		}
		start := time.Now()
		n, err := v.applySegment(ctx, seg)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, 500*time.Millisecond), DefaultMaxBackoff)
			log.Error("apply failed; the segment stays spooled and is retried", "first_seq", seg.first,
				"last_seq", seg.last, "retry_in", backoff, "err", err)
			v.mu.Lock()
			v.applyErr = err.Error()
			v.mu.Unlock()
			v.srv.errs.add(KindApply)
			if !v.retryAfter(ctx, seg, backoff, err) {
				return
			}
			continue
		}
		backoff = 0
		v.srv.unkeep(seg.mem) // before the pop: a volume with nothing pending holds no kept memory
		v.mu.Lock()
		v.pending = v.pending[1:]
		v.applyErr = ""
		v.mu.Unlock()
		if err := v.srv.spool.remove(seg); err != nil {
			log.Warn("could not remove applied segment from the spool", "err", err)
		}
		v.srv.spoolUsed.Add(-seg.size)
		v.appliedBytes.Add(n)
		log.Info("segment applied", "generation", seg.generation, "first_seq", seg.first, "last_seq", seg.last,
			"bytes", n, "took", time.Since(start).Round(time.Microsecond))
	}
}

// applySegment replays one spooled segment onto the replica, skipping the
// records the replica already has, creating a recovery point at each TAG
// and committing at the end. It returns the bytes of data applied. The
// segment is applied from its verified receive buffer when that was kept
// (keep.go), else read back from the spool.
func (v *volume) applySegment(ctx context.Context, seg spooledSeg) (int64, error) {
	if seg.mem != nil {
		return v.applyBytes(ctx, seg.mem.data, seg.path)
	}
	bp := v.srv.bufs.get(seg.size)
	defer v.srv.bufs.put(bp)
	data, err := v.srv.spool.read(seg, *bp)
	if err != nil {
		return 0, err
	}
	return v.applyBytes(ctx, data, seg.path)
}

// applyBytes replays the segment in data (see applySegment) through the
// one replay of package hrl: it hands this volume's sink the extents
// between two tags in one batch, aliasing data, each at most the target's
// MaxExtent long.
func (v *volume) applyBytes(ctx context.Context, data []byte, name string) (int64, error) {
	v.mu.Lock()
	st := v.applied
	v.mu.Unlock()
	maxExt := v.rep.Info().Size // no limit unless the target has one
	if p := v.srv.Target.Properties(); p.MaxExtent > 0 {
		maxExt = p.MaxExtent
	}
	v.replay.After, v.replay.End, v.replay.MaxExtent = st.Seq, 0, maxExt // records <= st.Seq: applied before a restart
	v.sink.v, v.sink.ctx, v.sink.applied = v, ctx, 0
	defer func() { v.sink.ctx = nil }()
	info, err := v.replay.Bytes(data, name, &v.sink)
	if err != nil {
		return v.sink.applied, err // names the segment and the seq
	}
	if last := info.LastSeq; last > st.Seq {
		end := targets.State{Generation: info.Generation, Seq: last}
		if err := v.rep.Commit(ctx, end); err != nil {
			return v.sink.applied, fmt.Errorf("commit seq %d: %w", last, err)
		}
		v.setApplied(end)
	}
	return v.sink.applied, nil
}

// applySink is the hrl.Sink of a volume's applier: extents go to the
// replica, a tag becomes a recovery point.
type applySink struct {
	v       *volume
	ctx     context.Context
	applied int64            // bytes of data applied
	exts    []targets.Extent // the batch, reused
}

func (a *applySink) Apply(exts []hrl.Extent) error {
	for _, e := range exts {
		a.exts = append(a.exts, targets.Extent{Off: e.Off, Len: e.Len, Data: e.Data, Trim: e.Trim})
		a.applied += int64(len(e.Data))
	}
	err := a.v.rep.Apply(a.ctx, a.exts)
	clear(a.exts)
	a.exts = a.exts[:0]
	return err
}

func (a *applySink) Tag(seq uint64, t hrl.Tag) error {
	v, ctx, gen := a.v, a.ctx, a.v.replay.Header().Generation
	p := targets.Point{Seq: seq, Generation: gen, Kind: t.Kind, Name: t.Name, Time: t.Time}
	v.mu.Lock()
	v.hasPoint = true // before: a point whose creation fails may exist all the same
	v.mu.Unlock()
	if err := v.rep.CreatePoint(ctx, p); err != nil {
		return fmt.Errorf("recovery point %d: %w", seq, err)
	}
	v.setApplied(targets.State{Generation: gen, Seq: seq})
	v.srv.logger().Info("recovery point created", "volume", v.info.Name, "seq", p.Seq, "kind", p.Kind,
		"name", p.Name, "lag", v.srv.now().Sub(p.Time).Round(time.Millisecond))
	if err := v.prune(ctx); err != nil {
		v.srv.logger().Warn("retention pruning failed", "volume", v.info.Name, "err", err)
	}
	return nil
}

func (v *volume) setApplied(st targets.State) {
	v.mu.Lock()
	v.applied = st
	v.mu.Unlock()
}

// prune deletes the points the retention schedule no longer keeps.
func (v *volume) prune(ctx context.Context) error {
	points, err := v.rep.Points(ctx)
	if err != nil {
		return err
	}
	ret := v.srv.Retention
	if f := v.srv.RetentionFor; f != nil {
		if r, ok := f(v.info.Machine, v.info.Name); ok {
			ret = r
		}
	}
	_, drop := ret.Select(points, v.srv.now())
	drop = keep(drop, v.srv.pinned(v.info.ID)) // under test or failover
	for _, p := range drop {
		if err := v.rep.DeletePoint(ctx, p.Seq); err != nil && !errors.Is(err, targets.ErrNotFound) {
			return fmt.Errorf("delete point %d: %w", p.Seq, err)
		}
		v.srv.logger().Info("recovery point pruned", "volume", v.info.Name, "seq", p.Seq, "time", p.Time)
	}
	return nil
}

// sleepCtx sleeps for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
