package pipeline

import (
	"context"
	"errors"
	"time"

	"lifeboat/hrl"
	"lifeboat/tracker"
)

// resyncLoop runs the initial replication and every resync the tracker asks
// for (after bitmap mode or an unclean shutdown), but only while the
// process server is reachable: resyncing into a journal nobody drains
// would only fill it again.
func (s *Shipper) resyncLoop(ctx context.Context) {
	log := s.logger()
	var backoff time.Duration
	for {
		if !sleepCtx(ctx, max(backoff, 200*time.Millisecond)) {
			return
		}
		st := s.Volume.Status()
		if st.Resync == "" || !s.connected() {
			continue
		}
		p := &Progress{Reason: st.Resync, Phase: PhaseCopying, Started: time.Now()}
		s.mu.Lock()
		s.status.Resync = p
		s.mu.Unlock()
		log.Info("resync started", "reason", st.Resync, "dirty_regions", st.DirtyRegions, "region_size", st.RegionSize)
		lastLog := time.Now()
		err := s.Volume.Resync(ctx, func(done, total int64) {
			s.mu.Lock()
			p.Done, p.Total = done, total
			if el := time.Since(p.Started).Seconds(); el > 0 && done > 0 {
				p.RateBps = float64(done) / el
				p.ETASeconds = float64(total-done) / p.RateBps
			}
			s.mu.Unlock()
			if time.Since(lastLog) >= 5*time.Second {
				lastLog = time.Now()
				log.Info("resync progress", "done", done, "total", total, "rate_MBps", int(p.RateBps/1e6),
					"eta", (time.Duration(p.ETASeconds) * time.Second).String())
			}
		})
		if err != nil {
			s.mu.Lock()
			s.status.Resync = nil
			s.mu.Unlock()
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, time.Second), s.maxBackoff())
			log.Error("resync failed; retrying", "retry_in", backoff, "err", err)
			continue
		}
		backoff = 0
		log.Info("resync complete", "reason", p.Reason, "dirty_bytes", p.Total, "took", time.Since(p.Started).Round(time.Millisecond))
		// The replica is consistent as soon as this tag is applied; the
		// progress stays until the server has it.
		seq := s.tag(ctx, "resync complete")
		s.mu.Lock()
		p.Phase, p.PointSeq, p.ETASeconds = PhaseShipping, seq, 0
		if seq == 0 || s.status.AckedSeq >= seq {
			s.status.Resync = nil
		}
		s.mu.Unlock()
	}
}

// tagLoop takes a crash-consistent tag every TagInterval while the volume
// changed since the last one.
func (s *Shipper) tagLoop(ctx context.Context) {
	if s.TagInterval <= 0 {
		return
	}
	t := time.NewTicker(s.TagInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := s.Volume.Status()
		s.mu.Lock()
		idle := s.lastTag != 0 && st.NextSeq == s.lastTag+1
		// From its start until its point is on the server, a resync is
		// this shipper's: the volume's own reason is cleared before the
		// "resync complete" tag is taken, and a tag in between would be a
		// point of the same content ahead of it.
		resyncing := s.status.Resync != nil
		s.mu.Unlock()
		if st.Resync != "" || idle || resyncing {
			continue
		}
		s.tag(ctx, "crash-consistent")
	}
}

// tag takes a crash-consistent tag now and returns its seq, or 0 when
// the volume could not take one.
func (s *Shipper) tag(ctx context.Context, name string) uint64 {
	now := time.Now()
	seq, err := s.Volume.Tag(hrl.TagCrash, name+" "+now.UTC().Format(time.RFC3339))
	switch {
	case err == nil:
		s.mu.Lock()
		s.lastTag = seq
		if len(s.tags) >= maxPendingTags {
			s.tags = s.tags[1:]
		}
		s.tags = append(s.tags, tagAt{seq, now})
		s.mu.Unlock()
		return seq
	case errors.Is(err, tracker.ErrResync), errors.Is(err, tracker.ErrClosed), ctx.Err() != nil:
	default:
		s.logger().Error("crash-consistent tag failed", "err", err)
	}
	return 0
}
