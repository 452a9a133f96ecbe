package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// volume is one replicated volume on the process server.
type volume struct {
	info targets.VolumeInfo // ID, Name, Size, BlockSize fixed while open; Machine guarded by mu
	rep  targets.Replica
	srv  *Server
	wake chan struct{}

	recvMu sync.Mutex // one segment received at a time

	mu         sync.Mutex
	spooledGen uint64
	spooledSeq uint64
	pending    []spooledSeg // spooled, not yet applied, in seq order
	applied    targets.State
	applyErr   string

	exts []targets.Extent // the applier's batch, reused
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
		Throttled: v.srv.throttle.current()}
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
			if !v.retryAfter(ctx, seg, backoff, err) {
				return
			}
			continue
		}
		backoff = 0
		v.mu.Lock()
		v.pending = v.pending[1:]
		v.applyErr = ""
		v.mu.Unlock()
		if err := v.srv.spool.remove(seg); err != nil {
			log.Warn("could not remove applied segment from the spool", "err", err)
		}
		v.srv.spoolUsed.Add(-seg.size)
		log.Info("segment applied", "generation", seg.generation, "first_seq", seg.first, "last_seq", seg.last,
			"bytes", n, "took", time.Since(start).Round(time.Microsecond))
	}
}

// applySegment replays one spooled segment onto the replica, skipping the
// records the replica already has, creating a recovery point at each TAG
// and committing at the end. It returns the bytes of data applied.
func (v *volume) applySegment(ctx context.Context, seg spooledSeg) (int64, error) {
	bp := v.srv.bufs.get(seg.size)
	defer v.srv.bufs.put(bp)
	data, err := v.srv.spool.read(seg, *bp)
	if err != nil {
		return 0, err
	}
	return v.applyBytes(ctx, data, seg.path)
}

// applyBytes replays the segment in data (see applySegment).
func (v *volume) applyBytes(ctx context.Context, data []byte, name string) (int64, error) {
	rd, err := hrl.NewReader(bytes.NewReader(data), int64(len(data)), name)
	if err != nil {
		return 0, err
	}
	gen := rd.Header.Generation
	v.mu.Lock()
	st := v.applied
	v.mu.Unlock()
	maxExt := v.rep.Info().Size // no limit unless the target has one
	if p := v.srv.Target.Properties(); p.MaxExtent > 0 {
		maxExt = p.MaxExtent
	}
	exts := v.exts[:0]
	defer func() { clear(exts); v.exts = exts[:0] }()
	var applied int64
	flush := func() error {
		if len(exts) == 0 {
			return nil
		}
		err := v.rep.Apply(ctx, exts)
		clear(exts)
		exts = exts[:0]
		return err
	}
	addData := func(off int64, b []byte) {
		applied += int64(len(b))
		for len(b) > 0 {
			n := min(int64(len(b)), maxExt)
			exts = append(exts, targets.Extent{Off: off, Len: n, Data: b[:n:n]})
			off, b = off+n, b[n:]
		}
	}
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return applied, fmt.Errorf("%s: %w", name, err)
		}
		if rec.Seq <= st.Seq {
			continue // applied before a restart
		}
		off := int64(rec.Offset)
		switch rec.Type {
		case hrl.TypeWrite, hrl.TypeResync:
			addData(off, data[rec.PayloadOffset:rec.PayloadOffset+int64(len(rec.Payload))])
		case hrl.TypeZero:
			trim := rec.Flags&hrl.FlagTrim != 0
			for n := int64(rec.Length); n > 0; { // targets cap zero extents too
				l := min(n, maxExt)
				exts = append(exts, targets.Extent{Off: off, Len: l, Trim: trim})
				off, n = off+l, n-l
			}
		case hrl.TypeRef:
			ref, err := hrl.DecodeRef(rec.Payload)
			if err != nil {
				return applied, fmt.Errorf("%s seq %d: %w", name, rec.Seq, err)
			}
			end := ref.SegmentOffset + uint64(rec.Length)
			if end > uint64(len(data)) || end < ref.SegmentOffset {
				return applied, fmt.Errorf("%s seq %d: REF source %d+%d outside the segment", name, rec.Seq, ref.SegmentOffset, rec.Length)
			}
			src := data[ref.SegmentOffset:end]
			if got := xxhash.Sum64(src); got != ref.Sum {
				return applied, fmt.Errorf("%s seq %d: REF source hashes to %016x, want %016x", name, rec.Seq, got, ref.Sum)
			}
			addData(off, src)
		case hrl.TypeTag:
			t, err := hrl.DecodeTag(rec.Payload)
			if err != nil {
				return applied, fmt.Errorf("%s seq %d: %w", name, rec.Seq, err)
			}
			if err := flush(); err != nil {
				return applied, err
			}
			p := targets.Point{Seq: rec.Seq, Generation: gen, Kind: t.Kind, Name: t.Name, Time: t.Time}
			if err := v.rep.CreatePoint(ctx, p); err != nil {
				return applied, fmt.Errorf("recovery point %d: %w", rec.Seq, err)
			}
			v.setApplied(targets.State{Generation: gen, Seq: rec.Seq})
			v.srv.logger().Info("recovery point created", "volume", v.info.Name, "seq", p.Seq, "kind", p.Kind,
				"name", p.Name, "lag", v.srv.now().Sub(p.Time).Round(time.Millisecond))
			if err := v.prune(ctx); err != nil {
				v.srv.logger().Warn("retention pruning failed", "volume", v.info.Name, "err", err)
			}
		}
	}
	if err := flush(); err != nil {
		return applied, err
	}
	if last := rd.LastSeq(); last > st.Seq {
		end := targets.State{Generation: gen, Seq: last}
		if err := v.rep.Commit(ctx, end); err != nil {
			return applied, fmt.Errorf("commit seq %d: %w", last, err)
		}
		v.setApplied(end)
	}
	return applied, nil
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
	_, drop := v.srv.Retention.Select(points, v.srv.now())
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
