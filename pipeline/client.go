package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// send ships one segment and returns nil once the server has it durably.
// Errors wrap ErrChecksum (resend), ErrGap (ask where the server is),
// ErrSlowDown or ErrPermanent; anything else is a transport error.
// follows marks a segment sent while the one before it may still be in
// flight (hdrFollows). The lane holds what one send in progress uses.
func (s *Shipper) send(ctx context.Context, seg hrl.SegmentInfo, follows bool, l *lane) error {
	f, err := s.Volume.OpenSegment(seg) // a file, or held in memory during a resync
	if err != nil {
		return fmt.Errorf("read segment: %w", err)
	}
	defer f.Close()
	sum, err := l.segmentSum(f, seg.Size)
	if err != nil {
		return fmt.Errorf("read segment %s: %w", seg.Path, err)
	}
	encoding := contentEncodingPlain
	if l.enc != nil {
		encoding = contentEncodingZstd
	}
	st := s.Volume.Status()
	body := openSegmentBody(f, seg.Size, l.enc)
	// The file is closed and the encoder used for the next segment only
	// once the transport has let go of this body (see segmentBody).
	defer body.finish(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.volumeURL(st.VolumeID)+"/segments", body)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPermanent, err)
	}
	if l.enc == nil {
		req.ContentLength = seg.Size
	} // else -1: chunked, the compressed size is known at the end
	h := req.Header
	h.Set("Content-Type", contentTypeSegment)
	h.Set("Content-Encoding", encoding)
	h.Set(hdrVolumeName, s.Name)
	h.Set(hdrVolumeSize, strconv.FormatInt(st.Size, 10))
	h.Set(hdrBlockSize, strconv.FormatUint(uint64(seg.BlockSize), 10))
	h.Set(hdrGeneration, strconv.FormatUint(seg.Generation, 10))
	h.Set(hdrFirstSeq, strconv.FormatUint(seg.FirstSeq, 10))
	h.Set(hdrLastSeq, strconv.FormatUint(seg.LastSeq, 10))
	h.Set(hdrSegmentSize, strconv.FormatInt(seg.Size, 10))
	h.Set(hdrSegmentSum, fmt.Sprintf("%016x", sum))
	if follows {
		h.Set(hdrFollows, "1")
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return fmt.Errorf("send segment %d..%d to %s: %w", seg.FirstSeq, seg.LastSeq, s.URL, err)
	}
	defer resp.Body.Close()
	var reply SegmentReply
	if err := decodeReply(resp, &reply); err != nil {
		return fmt.Errorf("segment %d..%d: %w", seg.FirstSeq, seg.LastSeq, err)
	}
	if err := s.checkAck(seg, reply); err != nil {
		return err
	}
	wire := seg.Size
	if n := body.finish(ctx); l.enc != nil {
		wire = n
	}
	s.mu.Lock()
	s.status.SegmentsSent++
	s.status.BytesRaw += seg.Size
	s.status.BytesWire += wire
	s.upload.add(time.Now(), wire)
	s.mu.Unlock()
	s.acked(seg)
	s.setConnected(nil)
	return nil
}

// decodeReply turns an answer into nil (200, body decoded into v unless v
// is nil) or an error wrapping the package error its status code stands
// for.
// AnswerError is the error an answer other than 200 stands for, as Call
// returns it, for a client that reads a 200's body itself.
func AnswerError(resp *http.Response) error { return decodeReply(resp, nil) }

func decodeReply(resp *http.Response, v any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode == http.StatusOK {
		if v == nil {
			return nil
		}
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("answer: %w", err)
		}
		return nil
	}
	var e SegmentReply
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	var kind error
	switch resp.StatusCode {
	case http.StatusUnprocessableEntity:
		kind = ErrChecksum
	case http.StatusConflict:
		kind = ErrGap
		if strings.HasPrefix(msg, ErrRecoveryState.Error()) {
			kind = ErrRecoveryState
		}
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		kind = ErrSlowDown
		if e.Throttled == ThrottleDiskFull {
			kind = ErrSiteDiskFull
		}
	case http.StatusNotFound:
		kind = ErrNoReplica
		if strings.HasPrefix(msg, targets.ErrNotFound.Error()) { // a recovery point
			kind = targets.ErrNotFound
		}
	case http.StatusForbidden:
		kind = ErrForbidden
	case http.StatusGone:
		kind = ErrFailedOver
	case http.StatusBadRequest, http.StatusUnauthorized:
		kind = ErrPermanent
	default:
		return fmt.Errorf("process server answered %s: %s", resp.Status, msg)
	}
	msg = strings.TrimPrefix(msg, kind.Error()+": ")
	if kind == ErrPermanent { // "permanent error" says nothing to the admin who sent a bad request
		return &replyError{kind: kind, msg: fmt.Sprintf("%s (%s)", msg, resp.Status)}
	}
	return fmt.Errorf("%w: %s (%s)", kind, msg, resp.Status)
}

// replyError is an answer's error that shows only the server's message.
type replyError struct {
	kind error
	msg  string
}

func (e *replyError) Error() string { return e.msg }
func (e *replyError) Unwrap() error { return e.kind }

func (s *Shipper) volumeURL(id string) string {
	return strings.TrimRight(s.URL, "/") + "/v1/volumes/" + id
}

// remoteStatus asks the server for the volume's progress; a volume the
// server has never seen is at seq 0.
func (s *Shipper) remoteStatus(ctx context.Context) (VolumeStatus, error) {
	var st VolumeStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.volumeURL(s.Volume.VolumeID()), nil)
	if err != nil {
		return st, err
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return st, fmt.Errorf("reach process server %s: %w", s.URL, err)
	}
	defer resp.Body.Close()
	err = decodeReply(resp, &st)
	if errors.Is(err, ErrNoReplica) {
		return VolumeStatus{}, nil
	}
	return st, err
}

// checkAck accepts the site's answer to seg only when it acknowledges seg
// itself, and says no more than the agent has written.
func (s *Shipper) checkAck(seg hrl.SegmentInfo, r SegmentReply) error {
	if r.AckedGeneration == 0 && r.AckedFirstSeq == 0 && r.AckedLastSeq == 0 {
		return fmt.Errorf("%w: the site's answer to segment %d..%d does not name the segment it acknowledges: it runs an "+
			"older Lifeboat; upgrade the site's servers first, then the agents; the segment stays in the journal",
			ErrBadAck, seg.FirstSeq, seg.LastSeq)
	}
	if r.AckedGeneration != seg.Generation || r.AckedFirstSeq != seg.FirstSeq || r.AckedLastSeq != seg.LastSeq {
		return fmt.Errorf("%w: segment generation %d seqs %d..%d was answered with an acknowledgement of generation %d seqs %d..%d; "+
			"the segment stays in the journal", ErrBadAck, seg.Generation, seg.FirstSeq, seg.LastSeq,
			r.AckedGeneration, r.AckedFirstSeq, r.AckedLastSeq)
	}
	return s.checkSite(r.SpooledGeneration, r.SpooledSeq)
}

// checkSite refuses a site that claims more of the volume than this agent
// has written: a generation or a seq the agent never reached means the
// replica holds writes that are not this machine's (or this journal was
// restored from an old copy), and acknowledging local segments against it
// would drop them unshipped.
func (s *Shipper) checkSite(gen, seq uint64) error {
	st := s.Volume.Status()
	if gen <= st.Generation && seq < st.NextSeq {
		return nil
	}
	return fmt.Errorf("%w: the site says it has generation %d up to seq %d of volume %s (id %s), but this agent has written "+
		"only up to seq %d in generation %d: the replica may hold writes of another machine, or this journal directory "+
		"was restored from an older copy. Nothing is deleted from the journal and shipping of this volume is stopped; "+
		"compare 'lifeboat volume list' on the site with this machine, and if the site's replica is not this machine's, "+
		"give this agent a new --journal-dir (a new volume id)", ErrBadAck, gen, seq, s.Name, st.VolumeID, st.NextSeq-1, st.Generation)
}
