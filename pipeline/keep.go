package pipeline

// Applying from the verified buffer. The receive path reads a segment into
// a buffer, verifies every checksum in it and spools that same buffer
// durably (fsync, rename, fsync of the directory) before it answers the
// agent. Reading the spool file back to apply it would cost a read of the
// whole segment and a second verification of every record; instead the
// receive hands the buffer to the volume's applier with the spooled segment
// (spooledSeg.mem), and the applier replays it from memory and releases it
// once the segment is applied. The spool file stays the durable copy: the
// applier reads it back only when no buffer came with the segment (after a
// server restart, or when the buffer was not kept). Before a volume's
// first recovery point the receive applies the buffer itself instead and
// spools nothing (direct.go).
//
// Memory bound. A kept buffer stops counting against the receive memory
// (Server.ReceiveMemory, for uploads in progress) and counts against the
// kept memory instead, which is at most half the receive memory (1 GiB by
// default): a buffer that would pass it is released at once, and its
// segment is read back from the spool when its turn comes. Kept buffers
// belong to segments that are spooled and not yet applied, so they are
// also within the spool quota. The process server's segment buffers
// therefore stay below 1.5 x ReceiveMemory (plus the one segment an upload
// may always take, see bodyread.go) and, when a volume's buffer was not
// kept, one more segment per volume that its applier reads from the spool.
// A target that is down holds the kept memory until it is back; uploads
// are unaffected, they use the receive memory.

// keptBuf is a verified segment's receive buffer, kept for the applier.
type keptBuf struct {
	bp   *[]byte
	data []byte // the segment, within *bp
}

// keepLimit is the most the kept buffers may hold.
func (s *Server) keepLimit() int64 { return s.receiveMemory() / 2 }

// keep moves a receive buffer (from readSegment) holding the segment data
// from the receive memory to the kept memory and returns it, or returns
// nil when the kept memory is full; the caller then keeps the buffer (and
// gives it back with releaseBuf).
func (s *Server) keep(bp *[]byte, data []byte) *keptBuf {
	if bp == nil {
		return nil
	}
	n := int64(cap(*bp))
	if !s.keptMem.take(n, -1, s.keepLimit()) { // -1: strict, never past the limit
		return nil
	}
	s.recvMem.give(n)
	return &keptBuf{bp: bp, data: data}
}

// unkeep gives back a kept buffer; nil is ignored.
func (s *Server) unkeep(k *keptBuf) {
	if k == nil {
		return
	}
	s.keptMem.give(int64(cap(*k.bp)))
	s.bufs.put(k.bp)
}
