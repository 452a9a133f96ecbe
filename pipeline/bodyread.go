package pipeline

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Receive buffers. A segment's body is read into a buffer that grows with
// the bytes that arrive (doubling, from minBufClass), never to the size the
// headers announce before the bytes are there: an upload that announces
// 1 GiB and sends 4 KiB holds 64 KiB. Buffers come from a pool per size
// class (eight classes per doubling, so a buffer is at most 1/8 larger
// than its content); when the pool holds a buffer of the announced size's
// class, memory the server has already, the body is read into it directly
// (the normal case: no allocation and no copy once the pools are warm).
// The verified buffer is what the spool writes (zero-copy). A compressed
// body is read whole (it grows the same way), then decoded in one call into
// a buffer of the announced size, which the decoder may not exceed.
//
// Every buffer a receive holds counts against Server.ReceiveMemory; an
// upload that would pass it is answered 503 (retry) unless it is the only
// one holding memory, so one segment of the largest size always goes
// through.
const (
	// DefaultStallTimeout is how long an upload may send nothing before
	// it is aborted and its volume released.
	DefaultStallTimeout = 60 * time.Second
	// DefaultIdleTimeout closes a keep-alive connection idle this long
	// (longer than the agent's 90 s, so the agent closes first).
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultReceiveMemory bounds the receive buffers of all uploads.
	DefaultReceiveMemory = 2 << 30

	minBufClass = 64 << 10
	// Class 0 is minBufClass; then eight per doubling up to
	// maxSegmentWireBytes (1 GiB = 64 KiB << 14).
	numClasses = 14*8 + 1
)

// Errors of the receive path.
var (
	// ErrStalled: an upload sent nothing for Server.StallTimeout.
	ErrStalled = errors.New("upload made no progress")
	// errBusy: the receive buffers would pass Server.ReceiveMemory.
	errBusy = fmt.Errorf("%w: receive memory in use", ErrSlowDown)
)

// bufPool keeps buffers by size class (classOf). Larger buffers (a
// compressed 1 GiB segment that did not compress) are not pooled.
type bufPool struct {
	classes [numClasses]sync.Pool
}

// classOf returns the smallest class holding n bytes and its size; false
// above maxSegmentWireBytes. Above minBufClass, the classes between 2^e
// and 2^(e+1) are 2^e + j*2^e/8 for j = 1..8.
func classOf(n int64) (int, int64, bool) {
	switch {
	case n <= minBufClass:
		return 0, minBufClass, true
	case n > maxSegmentWireBytes:
		return 0, 0, false
	}
	e := bits.Len64(uint64(n-1)) - 1 // 2^e < n <= 2^(e+1)
	step := int64(1) << (e - 3)
	j := (n - 1<<e + step - 1) / step
	return (e-16)*8 + int(j), 1<<e + j*step, true
}

// get returns a buffer of length n, from the pool when one is there.
func (p *bufPool) get(n int64) *[]byte {
	if bp := p.pooled(n); bp != nil {
		return bp
	}
	_, size, ok := classOf(n)
	if !ok {
		size = n
	}
	b := make([]byte, n, size)
	return &b
}

// pooled returns a pooled buffer of length n, or nil when the pool has
// none of n's class.
func (p *bufPool) pooled(n int64) *[]byte {
	k, _, ok := classOf(n)
	if !ok {
		return nil
	}
	if bp, ok := p.classes[k].Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	return nil
}

// put returns a buffer got from get; nil is ignored.
func (p *bufPool) put(bp *[]byte) {
	if bp == nil {
		return
	}
	if k, size, ok := classOf(int64(cap(*bp))); ok && int64(cap(*bp)) == size {
		p.classes[k].Put(bp)
	}
}

// memBudget counts the bytes of the receive buffers in use.
type memBudget struct {
	held atomic.Int64
}

// take reserves n bytes of limit for a receive that holds own bytes
// already; it fails when others hold memory and n would pass the limit.
func (m *memBudget) take(n, own, limit int64) bool {
	for {
		cur := m.held.Load()
		if cur > own && cur+n > limit {
			return false
		}
		if m.held.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (m *memBudget) give(n int64) { m.held.Add(-n) }

// takeBuf returns a receive buffer of length n, counted against the
// budget, or errBusy; own is the memory the caller holds already.
func (s *Server) takeBuf(n, own int64) (*[]byte, error) {
	return s.budget(s.bufs.get(n), n, own)
}

// budget counts bp against the receive memory, or gives it back and
// returns errBusy.
func (s *Server) budget(bp *[]byte, n, own int64) (*[]byte, error) {
	if !s.recvMem.take(int64(cap(*bp)), own, s.receiveMemory()) {
		s.bufs.put(bp)
		return nil, fmt.Errorf("%w (%d bytes of --receive-memory %d; %d more needed)", errBusy,
			s.recvMem.held.Load(), s.receiveMemory(), n)
	}
	return bp, nil
}

// releaseBuf gives back a buffer from takeBuf; nil is ignored.
func (s *Server) releaseBuf(bp *[]byte) {
	if bp == nil {
		return
	}
	s.recvMem.give(int64(cap(*bp)))
	s.bufs.put(bp)
}

func (s *Server) receiveMemory() int64 {
	if s.ReceiveMemory <= 0 {
		return DefaultReceiveMemory
	}
	return s.ReceiveMemory
}

// zstdBound is the most a zstd frame of n bytes of content can take on the
// wire (a 3-byte header per 128 KiB block, frame header and checksum),
// rounded up generously.
func zstdBound(n int64) int64 { return n + n>>10 + 1024 }

// readSegment reads a segment's body (see the top of this file). It
// returns the buffer holding the segment (give it back with releaseBuf,
// also on error) and the segment's bytes, exactly h.size of them.
func (s *Server) readSegment(body io.Reader, h segmentHeaders) (*[]byte, []byte, error) {
	if h.encoding != contentEncodingZstd {
		bp, data, err := s.readGrowing(body, h.size)
		if err == nil && int64(len(data)) != h.size {
			err = fmt.Errorf("%w: read %d of %d bytes: the body ended early", ErrChecksum, len(data), h.size)
		}
		return bp, data, err
	}
	wp, wire, err := s.readGrowing(body, zstdBound(h.size))
	defer s.releaseBuf(wp)
	if err != nil {
		return nil, nil, err
	}
	var zh zstd.Header
	if err := zh.Decode(wire); err != nil {
		return nil, nil, fmt.Errorf("%w: zstd: %v", ErrChecksum, err)
	}
	if zh.HasFCS && zh.FrameContentSize != uint64(h.size) {
		return nil, nil, fmt.Errorf("%w: the zstd frame holds %d bytes, the headers say %d", ErrChecksum, zh.FrameContentSize, h.size)
	}
	bp, err := s.takeBuf(h.size, int64(cap(*wp)))
	if err != nil {
		return nil, nil, err
	}
	d, err := s.decoder()
	if err != nil {
		return bp, nil, err
	}
	defer s.decoders.Put(d)
	data, err := d.DecodeAll(wire, (*bp)[:0])
	switch {
	case err != nil:
		return bp, nil, fmt.Errorf("%w: zstd: %v", ErrChecksum, err)
	case int64(len(data)) != h.size:
		return bp, nil, fmt.Errorf("%w: the body decodes to %d bytes, the headers say %d", ErrChecksum, len(data), h.size)
	}
	return bp, data, nil
}

// readGrowing reads body to its end into a buffer that doubles as bytes
// arrive, up to limit bytes; a longer body is refused. A pooled buffer of
// limit's class is used at once when there is one.
func (s *Server) readGrowing(body io.Reader, limit int64) (*[]byte, []byte, error) {
	var bp *[]byte
	var err error
	if p := s.bufs.pooled(limit); p != nil {
		if bp, err = s.budget(p, limit, 0); err != nil {
			bp = nil // others hold memory: start small
		}
	}
	if bp == nil {
		if bp, err = s.takeBuf(min(limit, minBufClass), 0); err != nil {
			return nil, nil, err
		}
	}
	n := 0
	for {
		b := *bp
		if n == len(b) {
			if int64(n) == limit {
				var one [1]byte
				m, err := io.ReadFull(body, one[:])
				if m != 0 {
					return bp, nil, fmt.Errorf("%w: body longer than the announced %d bytes", ErrChecksum, limit)
				}
				if errors.Is(err, io.EOF) {
					return bp, b[:n], nil
				}
				return bp, nil, readErr(err, n)
			}
			nb, err := s.takeBuf(min(limit, 2*int64(len(b))), int64(cap(b)))
			if err != nil {
				return bp, nil, err
			}
			copy(*nb, b[:n])
			s.releaseBuf(bp)
			bp = nb
			continue
		}
		m, err := body.Read(b[n:])
		n += m
		if errors.Is(err, io.EOF) {
			return bp, b[:n], nil
		}
		if err != nil {
			return bp, nil, readErr(err, n)
		}
	}
}

func readErr(err error, n int) error {
	if errors.Is(err, ErrStalled) {
		return err
	}
	return fmt.Errorf("%w: read failed after %d bytes: %v", ErrChecksum, n, err)
}

func (s *Server) decoder() (*zstd.Decoder, error) {
	if d, ok := s.decoders.Get().(*zstd.Decoder); ok {
		return d, nil
	}
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(false),
		zstd.WithDecoderMaxMemory(maxSegmentWireBytes), zstd.WithDecodeAllCapLimit(true))
}

// progressBody is r's body with a deadline that moves with every read: an
// upload that sends nothing for StallTimeout fails with ErrStalled, one
// that is slow but moving is never cut.
func (s *Server) progressBody(w http.ResponseWriter, r *http.Request) io.Reader {
	return &progressReader{r: r.Body, rc: http.NewResponseController(w), stall: s.stallTimeout()}
}

type progressReader struct {
	r     io.Reader
	rc    *http.ResponseController
	stall time.Duration
	n     int64
}

func (p *progressReader) Read(b []byte) (int, error) {
	// Errors only when the connection cannot take deadlines (a test
	// recorder); the read then has none, as before.
	p.rc.SetReadDeadline(time.Now().Add(p.stall))
	n, err := p.r.Read(b)
	p.n += int64(n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w for %v after %d bytes", ErrStalled, p.stall, p.n)
	}
	return n, err
}

func (s *Server) stallTimeout() time.Duration {
	if s.StallTimeout <= 0 {
		return DefaultStallTimeout
	}
	return s.StallTimeout
}

// refuseBody answers an upload whose body could not be read or verified:
// 408 when it stalled (the connection is closed), 503 when the receive
// buffers are in use, 422 otherwise (the agent resends).
func (s *Server) refuseBody(w http.ResponseWriter, log *slog.Logger, err error) {
	switch {
	case errors.Is(err, ErrStalled):
		log.Warn("segment upload stalled; aborted, the volume takes the next upload", "err", err)
		w.Header().Set("Connection", "close")
		httpError(w, http.StatusRequestTimeout, err)
	case errors.Is(err, errBusy):
		log.Warn("segment refused for now: the receive buffers are in use; the agent retries", "err", err)
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusServiceUnavailable, err)
	default:
		log.Warn("segment refused; the agent will resend it", "err", err)
		httpError(w, http.StatusUnprocessableEntity, err)
	}
}
