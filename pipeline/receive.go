package pipeline

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/google/uuid"

	"lifeboat/hrl"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// segmentHeaders is what the shipper says about a segment.
type segmentHeaders struct {
	info       targets.VolumeInfo
	generation uint64
	first      uint64
	last       uint64
	size       int64
	sum        uint64
	encoding   string
	follows    bool            // hdrFollows: only after the segment before it
	ctx        context.Context // the request's
}

func parseSegmentHeaders(r *http.Request) (segmentHeaders, error) {
	var h segmentHeaders
	var err error
	num := func(name string) uint64 {
		if err != nil {
			return 0
		}
		var n uint64
		n, err = strconv.ParseUint(r.Header.Get(name), 10, 64)
		if err != nil {
			err = fmt.Errorf("header %s: %w", name, err)
		}
		return n
	}
	h.info.ID = r.PathValue("id")
	h.ctx = r.Context()
	h.follows = r.Header.Get(hdrFollows) == "1"
	h.info.Name = r.Header.Get(hdrVolumeName)
	h.info.Size = int64(num(hdrVolumeSize))
	h.info.BlockSize = int(num(hdrBlockSize))
	h.generation = num(hdrGeneration)
	h.first = num(hdrFirstSeq)
	h.last = num(hdrLastSeq)
	h.size = int64(num(hdrSegmentSize))
	if err != nil {
		return h, err
	}
	if _, perr := uuid.Parse(h.info.ID); perr != nil {
		return h, fmt.Errorf("volume id %q: %w", h.info.ID, perr)
	}
	sum, perr := hex.DecodeString(r.Header.Get(hdrSegmentSum))
	if perr != nil || len(sum) != 8 {
		return h, fmt.Errorf("header %s: want 16 hex digits", hdrSegmentSum)
	}
	for _, b := range sum {
		h.sum = h.sum<<8 | uint64(b)
	}
	switch h.encoding = r.Header.Get("Content-Encoding"); h.encoding {
	case contentEncodingZstd, contentEncodingPlain, "":
	default:
		return h, fmt.Errorf("content encoding %q: want zstd or identity", h.encoding)
	}
	switch {
	case h.info.Name == "":
		return h, fmt.Errorf("header %s missing", hdrVolumeName)
	case h.info.Size <= 0 || h.info.Size%512 != 0:
		return h, fmt.Errorf("volume size %d: want a positive multiple of 512", h.info.Size)
	case h.info.BlockSize <= 0 || h.info.BlockSize%512 != 0:
		return h, fmt.Errorf("block size %d: want a positive multiple of 512", h.info.BlockSize)
	case h.size < hrl.HeaderSize || h.size > maxSegmentWireBytes:
		return h, fmt.Errorf("segment size %d out of range", h.size)
	case h.first == 0 || h.last+1 < h.first:
		return h, fmt.Errorf("seq range %d..%d invalid", h.first, h.last)
	}
	return h, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, SegmentReply{Error: err.Error()})
}

// handleSegment receives one segment: sender, continuity, throttling,
// decode, verify every checksum, spool durably (or, before the volume's
// first point, apply and commit it: direct.go), then answer.
func (s *Server) handleSegment(w http.ResponseWriter, r *http.Request) {
	h, err := parseSegmentHeaders(r)
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	log := s.logger().With("volume", h.info.Name, "id", h.info.ID, "generation", h.generation, "first_seq", h.first, "last_seq", h.last)
	p, err := peerOf(r)
	if err == nil && p.role != pki.RoleAgent {
		err = fmt.Errorf("%w: segments come only from agent certificates, this is the %s certificate of %s", ErrForbidden, p.role, p.name)
	}
	var v *volume
	if err == nil {
		log = log.With("machine", p.name)
		v, err = s.volumeFor(r.Context(), p, h.info)
	}
	if err != nil {
		log.Error("segment refused", "err", err)
		s.errs.addErr(err)
		httpError(w, statusCode(err), err)
		return
	}
	v.beginUpload()
	defer v.endUpload()
	acked := SegmentReply{AckedGeneration: h.generation, AckedFirstSeq: h.first, AckedLastSeq: h.last}
	// Answered before the body when the answer cannot change: a fenced
	// volume, a segment already here, a gap no upload in progress fills.
	if s.refuseEarly(w, v, h, p, acked, log, false) {
		return
	}
	if err := s.admit(h.size); err != nil {
		s.errs.addErr(err)
		writeThrottled(w, err)
		return
	}
	// The body is read and verified without the volume's lock: the next
	// segment's upload overlaps with this one's spooling or apply.
	bp, data, err := s.readSegment(s.progressBody(w, r), h)
	defer func() { s.releaseBuf(bp) }() // unless kept for the applier
	if err == nil {
		err = verifySegment(data, h)
	}
	if err != nil {
		s.errs.addErr(err)
		s.refuseBody(w, log, err)
		return
	}
	v.recvMu.Lock()
	defer v.recvMu.Unlock()
	// Checked again under recvMu, waiting for a segment it follows that
	// is still being received.
	if s.refuseEarly(w, v, h, p, acked, log, true) {
		return
	}
	if s.applyDirect(r.Context(), v, h, data, log) { // before the first point (direct.go)
		v.received.Add(int64(len(data)))
		acked.SpooledGeneration, acked.SpooledSeq = h.generation, h.last
		writeJSON(w, http.StatusOK, acked)
		return
	}
	seg, err := s.spool.put(h.info.ID, spooledSeg{generation: h.generation, first: h.first, last: h.last}, data)
	if err != nil {
		s.spoolFailed(w, log, err)
		return
	}
	s.spoolUsed.Add(seg.size)
	v.received.Add(seg.size)
	if seg.mem = s.keep(bp, data); seg.mem != nil {
		bp = nil // the applier applies it from memory and releases it
	}
	v.push(seg)
	log.Debug("segment spooled", "bytes", seg.size)
	acked.SpooledGeneration, acked.SpooledSeq = h.generation, h.last
	writeJSON(w, http.StatusOK, acked)
}

// volumeFor returns the volume a segment of p's belongs to, opening its
// replica the first time a volume is seen: created for p's machine when
// the site has never seen it, refused when it belongs to another machine
// (checked before the replica is opened, so that another machine's
// headers cannot resize it).
func (s *Server) volumeFor(ctx context.Context, p peer, want targets.VolumeInfo) (*volume, error) {
	info := want
	if limit := s.Target.Properties().MaxSize; limit > 0 && info.Size > limit {
		return nil, fmt.Errorf("%w: volume %s is %d bytes; this site's target holds at most %d bytes per volume: "+
			"protect a smaller volume, or replicate it to another target", ErrPermanent, info.Name, info.Size, limit)
	}
	v := s.volume(info.ID)
	if v == nil {
		k, err := s.known(ctx, info.ID)
		if err != nil {
			return nil, err
		}
		if k != nil {
			if err := p.mayReach(*k); err != nil {
				return nil, err
			}
			info = *k // opened as it is; a change of geometry is refused below
			info.Name = want.Name
		} else {
			info.Machine = p.name
		}
		if v, err = s.openVolume(ctx, info); err != nil {
			if k != nil {
				s.markFailed(info, err)
			}
			return nil, err
		}
	}
	if err := s.claim(ctx, p, v); err != nil {
		return nil, err
	}
	if v.info.Size != want.Size || v.info.BlockSize != want.BlockSize {
		return nil, fmt.Errorf("%w: volume %s changed geometry (size %d→%d, block size %d→%d); resizing a protected volume is not supported yet",
			ErrPermanent, want.Name, v.info.Size, want.Size, v.info.BlockSize, want.BlockSize)
	}
	return v, nil
}

// verifySegment checks the whole-segment checksum, then every record and
// the footer, and that the segment is what the headers say.
func verifySegment(data []byte, h segmentHeaders) error {
	if got := xxhash.Sum64(data); got != h.sum {
		return fmt.Errorf("%w: segment %d..%d hashes to %016x, the agent sent %016x", ErrChecksum, h.first, h.last, got, h.sum)
	}
	info, err := hrl.ScanBytes(data, spoolName(h.first, h.last)) // no copy of the records
	if err != nil {
		return fmt.Errorf("%w: %v", ErrChecksum, err)
	}
	id, _ := uuid.Parse(h.info.ID)
	switch {
	case !info.Sealed:
		return fmt.Errorf("%w: segment %d..%d is not sealed", ErrChecksum, h.first, h.last)
	case info.VolumeID != id:
		return fmt.Errorf("segment belongs to volume %s, not %s", uuid.UUID(info.VolumeID), h.info.ID)
	case info.Generation != h.generation || info.FirstSeq != h.first || info.LastSeq != h.last:
		return fmt.Errorf("segment is generation %d seqs %d..%d, headers say %d seqs %d..%d",
			info.Generation, info.FirstSeq, info.LastSeq, h.generation, h.first, h.last)
	case int(info.BlockSize) != h.info.BlockSize:
		return fmt.Errorf("segment block size %d, headers say %d", info.BlockSize, h.info.BlockSize)
	}
	return nil
}

// Order of segments in flight. An agent may send the segments that follow
// one it is still sending (Shipper.InFlight), each marked with hdrFollows:
// the segment continues the one before it, same generation, no gap. Their
// bodies are received at once, and each takes the volume's recvMu only to
// check its place and store it, so a segment that arrives before the one
// it follows waits (recvCond) while an upload of the volume is in
// progress, and is refused as a gap (409) only when none is: the agent
// then asks where the server is and sends again. Without hdrFollows a
// segment may also start a new generation, so it is never taken ahead of
// an upload in progress.

// MaxSegmentsInFlight is how many segments of one volume this server
// takes at once (VolumeStatus.SegmentsInFlight).
const MaxSegmentsInFlight = 4

// aheadGrace is how long a segment that arrives ahead of the one it
// follows waits for that one's upload to begin.
const aheadGrace = 500 * time.Millisecond

// placement is where a segment stands against the volume's spooled state.
type placement int

const (
	placeNext  placement = iota // continues the spooled state: take it
	placeHere                   // already spooled: acknowledge again
	placeAhead                  // follows a segment not here yet, maybe in flight
	placeGap                    // cannot continue the spooled state
)

func place(h segmentHeaders, follows bool, gen, seq uint64) placement {
	switch {
	case h.last <= seq && h.last >= h.first:
		return placeHere
	case follows && h.generation == gen && h.first == seq+1:
		return placeNext
	case follows && h.first > seq+1:
		return placeAhead
	case follows:
		return placeGap
	case h.generation == gen && h.first == seq+1,
		seq == 0 && h.first == 1,
		// A new generation follows a resync of the regions its gap
		// changed; generation 1 is an agent's first journal, so on an
		// empty replica only seq 1 may start it.
		h.generation > gen && h.first > seq && !(seq == 0 && h.generation == 1):
		return placeNext
	}
	return placeGap
}

// refuseEarly answers a segment that must not be stored: its volume is
// fenced or moved to another machine, it is already here (200), or it
// does not continue the spooled state (409). locked: the caller holds
// v.recvMu, and a segment ahead waits there for the one it follows while
// another upload of the volume is in progress; otherwise a segment ahead
// is let through to read its body.
func (s *Server) refuseEarly(w http.ResponseWriter, v *volume, h segmentHeaders, p peer, acked SegmentReply, log *slog.Logger, locked bool) bool {
	r := func(err error) bool {
		log.Info("segment refused", "err", err)
		s.errs.addErr(err)
		httpError(w, statusCode(err), err)
		return true
	}
	if err := s.failedOver(h.info.ID); err != nil { // final under recvMu: see SiteVolume.Fence
		return r(err)
	}
	if err := p.mayReach(v.infoNow()); err != nil { // final under recvMu: an admin's reassignment
		return r(err)
	}
	follows := h.follows
	grace := time.Now().Add(aheadGrace)
	for {
		gen, seq := v.spooled()
		switch place(h, follows, gen, seq) {
		case placeHere:
			// A resend after a lost answer: acknowledge again.
			acked.SpooledGeneration, acked.SpooledSeq = gen, seq
			writeJSON(w, http.StatusOK, acked)
			return true
		case placeNext:
			return false
		case placeAhead:
			if !locked {
				return false
			}
			// Wait while another upload is active (not itself waiting):
			// it may be the one this follows; and for aheadGrace, in case
			// that one's request has not arrived yet.
			active, early := v.uploads-v.waiting > 1, time.Now().Before(grace)
			if (active || early) && h.ctx.Err() == nil {
				v.waiting++
				if v.waiting == v.uploads {
					v.recvCond.Broadcast() // nobody left to fill the gap
				}
				stop := context.AfterFunc(h.ctx, v.wakeReceivers)
				var timer *time.Timer
				if early {
					timer = time.AfterFunc(time.Until(grace), v.wakeReceivers)
				}
				v.recvCond.Wait()
				if timer != nil {
					timer.Stop()
				}
				stop()
				v.waiting--
				continue
			}
		}
		err := fmt.Errorf("%w: replica has generation %d up to seq %d, segment is generation %d seqs %d..%d",
			ErrGap, gen, seq, h.generation, h.first, h.last)
		log.Warn("segment refused", "err", err)
		s.errs.add(KindGap)
		writeJSON(w, http.StatusConflict, SegmentReply{SpooledGeneration: gen, SpooledSeq: seq, Error: err.Error()})
		return true
	}
}

// beginUpload and endUpload count the volume's uploads in progress; the
// end of one wakes the segments waiting for the one they follow.
func (v *volume) beginUpload() {
	v.recvMu.Lock()
	v.uploads++
	v.recvMu.Unlock()
}

func (v *volume) wakeReceivers() {
	v.recvMu.Lock()
	v.recvCond.Broadcast()
	v.recvMu.Unlock()
}

func (v *volume) endUpload() {
	v.recvMu.Lock()
	v.uploads--
	v.recvCond.Broadcast()
	v.recvMu.Unlock()
}
