package pipeline

// Applying before the first recovery point, without a spool copy. An
// initial replication or a full resync sends the whole volume, and until
// its first recovery point the replica holds nothing anyone can recover
// to: the spool would protect no point, it would only cost a write and an
// fsync of every byte before the apply writes it again. So while a volume
// has no recovery point yet and nothing is waiting for its applier, the
// receive path applies the verified buffer itself, through the applier's
// own replay (applyBytes: the same skipping of what the replica has, the
// same sink, a TAG still becomes a point), commits the replica, and only
// then answers 200; the segment never reaches the spool.
//
// Order. The receive holds the volume's recvMu, so no segment is pushed
// meanwhile, and it goes direct only when the volume's pending list is
// empty: the applier is idle, it touches v.replay and v.sink only while
// it has a segment pending, and no spooled segment can be overtaken. A
// volume has a point (volume.hasPoint) once Points listed one when it was
// loaded or the sink is about to create one; it then stays so until the
// server restarts, even if the point is pruned: every later segment is
// spooled as before.
//
// Durability. The 200 comes after Commit returned with a state covering
// the segment's last seq. The file target's Commit fsyncs replica.img and
// then writes state.json durably (fsync, rename, fsync of the directory);
// the Azure target's Put Page calls are durable when they return (Apply
// returns after all of them) and Commit records the state in the blob's
// metadata, durable when Set Metadata returns. Either way the replica's
// committed state survives a crash of the server or the site.
//
// Failure. When the direct apply fails (target down, disk full, the
// request or the server ending), the segment takes the normal path: it is
// spooled durably, pushed, and answered 200 only then; its applier applies
// it again from the replica's committed state (recovering the replica
// first after a storage failure, recover.go). Applying is idempotent: the
// replay skips the records at or below the committed seq, and extents
// applied again give the same content.
//
// Crash. A server killed during a direct apply leaves the replica's
// committed state at its last commit (uncommitted writes are redone or
// dropped by the target's open) and the agent without a 200: it resends
// the segment, which is applied again (directly or from the spool) after
// the committed seq. A server killed after the commit and before the
// answer finds the segment at or below the replica's state and
// acknowledges the resend at once.

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// applyDirect applies a verified segment straight onto v's replica when v
// has no recovery point yet and nothing pending, and reports whether it
// did: then the replica's committed state covers the segment and the
// caller answers 200 without spooling it. false means the caller spools
// the segment as usual (a failed attempt is logged). The caller holds
// v.recvMu and has checked the segment's continuity.
func (s *Server) applyDirect(ctx context.Context, v *volume, h segmentHeaders, data []byte, log *slog.Logger) bool {
	v.mu.Lock()
	ok := !v.hasPoint && len(v.pending) == 0 && h.last >= h.first // an empty segment is spooled: it has no state to commit
	v.mu.Unlock()
	if !ok {
		return false
	}
	ctx, cancel := context.WithCancel(ctx) // the request's, and the server's
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	start := time.Now()
	n, err := v.applyBytes(ctx, data, spoolName(h.first, h.last))
	if err == nil {
		v.mu.Lock()
		st := v.applied
		v.mu.Unlock()
		if st.Generation != h.generation || st.Seq < h.last {
			err = fmt.Errorf("the replica's committed state (generation %d, seq %d) does not cover the segment", st.Generation, st.Seq)
		}
	}
	if err != nil {
		log.Warn("direct apply failed; spooling the segment instead, its applier applies it again from the replica's committed state",
			"err", err)
		return false
	}
	v.mu.Lock()
	v.spooledGen, v.spooledSeq = h.generation, h.last
	v.direct++
	v.mu.Unlock()
	v.appliedBytes.Add(n)
	// The applier's line, field for field (scripts and tests read it), and
	// direct=true.
	s.logger().Info("segment applied", "volume", v.info.Name, "generation", h.generation, "first_seq", h.first,
		"last_seq", h.last, "bytes", n, "took", time.Since(start).Round(time.Microsecond), "direct", true)
	return true
}
