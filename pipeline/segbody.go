package pipeline

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// Memory of a shipper. A segment is never held in memory whole: it is
// hashed in one pass over the file (sumChunk bytes at a time) and then
// streamed from the file through the zstd encoder into the request body.
// What one shipper holds is thus about 2 x ShipWindow (the encoder's
// history) plus a few 128 KiB blocks, whatever SegmentBytes is, instead of
// the segment and its compressed copy.
const (
	// ShipWindow is the zstd window of the shipper's encoder: the
	// farthest back a match may point. Matches across a larger distance
	// in a segment are mostly whole blocks, which the journal already
	// stores as REF records.
	ShipWindow = 1 << 20
	sumChunk   = 256 << 10
)

// newEncoder returns the shipper's streaming encoder for level.
func newEncoder(level zstd.EncoderLevel) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(ShipWindow), zstd.WithLowerEncoderMem(true))
}

// lane is what one segment in flight uses: its encoder and its hashing
// buffer. A shipper has one lane per segment it may have in flight.
type lane struct {
	enc    *zstd.Encoder // nil: uncompressed
	sumBuf []byte
}

// segmentSum is the xxhash64 of the first size bytes of f, read in
// sumChunk pieces into the lane's buffer.
func (l *lane) segmentSum(f io.ReaderAt, size int64) (uint64, error) {
	if l.sumBuf == nil {
		l.sumBuf = make([]byte, sumChunk)
	}
	var d xxhash.Digest
	d.Reset()
	if _, err := io.CopyBuffer(&d, io.NewSectionReader(f, 0, size), l.sumBuf); err != nil {
		return 0, err
	}
	return d.Sum64(), nil
}

// segmentBody is a request body that streams a segment file, compressed
// when enc is set. The transport closes it once it has stopped reading
// it, which can be after Client.Do returned: when the server answers
// before it has read the whole body (a 503, a 409, a 403), the transport
// may still be reading. The file and the encoder are only let go after
// finish.
type segmentBody struct {
	io.Reader
	pr   *io.PipeReader // nil when not compressed
	wire countWriter    // bytes of the compressed stream
	once sync.Once
	done chan struct{} // closed by Close
	enc  chan struct{} // closed when the encoding goroutine has returned
}

// countWriter counts what passes to w.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// openSegmentBody streams size bytes of f, through enc unless it is nil.
func openSegmentBody(f io.ReaderAt, size int64, enc *zstd.Encoder) *segmentBody {
	b := &segmentBody{done: make(chan struct{}), enc: make(chan struct{})}
	src := io.NewSectionReader(f, 0, size)
	if enc == nil {
		b.Reader = src
		close(b.enc)
		return b
	}
	pr, pw := io.Pipe()
	b.Reader, b.pr, b.wire.w = pr, pr, pw
	go func() {
		defer close(b.enc)
		enc.ResetContentSize(&b.wire, size)
		_, err := io.Copy(enc, src) // the encoder reads into its own blocks
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			err = fmt.Errorf("compress segment: %w", err)
		}
		pw.CloseWithError(err) // nil: end of body
	}()
	return b
}

func (b *segmentBody) Close() error {
	b.once.Do(func() { close(b.done) })
	if b.pr != nil {
		b.pr.Close() // a writer still encoding gets ErrClosedPipe
	}
	return nil
}

// finish waits until the transport has closed the body (it always does,
// errors included) or ctx ended, then stops the encoding and waits for it:
// after finish, the file may be closed and the encoder reused. It returns
// the bytes of the compressed stream produced.
func (b *segmentBody) finish(ctx context.Context) int64 {
	select {
	case <-b.done:
	case <-ctx.Done():
	}
	b.Close()
	<-b.enc
	return b.wire.n
}
