package pipeline

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

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
		httpError(w, statusCode(err), err)
		return
	}
	v.recvMu.Lock()
	defer v.recvMu.Unlock()
	if err := s.failedOver(h.info.ID); err != nil { // checked under recvMu: see SiteVolume.Fence
		log.Info("segment refused", "err", err)
		httpError(w, statusCode(err), err)
		return
	}
	gen, seq := v.spooled()
	acked := SegmentReply{AckedGeneration: h.generation, AckedFirstSeq: h.first, AckedLastSeq: h.last}
	switch {
	case h.last <= seq && h.last >= h.first:
		// Already here (a resend after a lost answer): acknowledge again.
		acked.SpooledGeneration, acked.SpooledSeq = gen, seq
		writeJSON(w, http.StatusOK, acked)
		return
	case h.generation == gen && h.first == seq+1,
		seq == 0 && h.first == 1,
		// A new generation follows a resync of the regions its gap
		// changed; generation 1 is an agent's first journal, so on an
		// empty replica only seq 1 may start it.
		h.generation > gen && h.first > seq && !(seq == 0 && h.generation == 1):
	default:
		err := fmt.Errorf("%w: replica has generation %d up to seq %d, segment is generation %d seqs %d..%d",
			ErrGap, gen, seq, h.generation, h.first, h.last)
		log.Warn("segment refused", "err", err)
		writeJSON(w, http.StatusConflict, SegmentReply{SpooledGeneration: gen, SpooledSeq: seq, Error: err.Error()})
		return
	}
	if err := s.admit(h.size); err != nil {
		writeThrottled(w, err)
		return
	}
	bp, data, err := s.readSegment(s.progressBody(w, r), h)
	defer func() { s.releaseBuf(bp) }() // unless kept for the applier
	if err == nil {
		err = verifySegment(data, h)
	}
	if err != nil {
		s.refuseBody(w, log, err)
		return
	}
	if s.applyDirect(r.Context(), v, h, data, log) { // before the first point (direct.go)
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
