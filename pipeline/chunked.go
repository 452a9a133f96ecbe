package pipeline

import (
	"errors"
	"fmt"
	"io"
)

// pointChunk is how much a point download reads from the target at once.
// http.ServeContent copies in 32 KiB pieces; a target behind a network
// (an Azure page blob) pays a round trip per read, so reads are gathered
// into chunks of this size.
const pointChunk = 4 << 20

// chunkedReader reads an io.ReaderAt of a known size sequentially, pointChunk
// bytes per ReadAt, and seeks (for HTTP Range requests).
type chunkedReader struct {
	r         io.ReaderAt
	size, pos int64
	buf       []byte
	bufOff    int64 // offset of buf[0] in r
	err       error // the first read error, for the caller to act on
}

func newChunkedReader(r io.ReaderAt, size int64) *chunkedReader {
	return &chunkedReader{r: r, size: size}
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.pos >= c.size {
		return 0, io.EOF
	}
	if c.pos < c.bufOff || c.pos >= c.bufOff+int64(len(c.buf)) {
		if c.buf == nil {
			c.buf = make([]byte, pointChunk)
		}
		want := min(pointChunk, c.size-c.pos)
		n, err := c.r.ReadAt(c.buf[:want], c.pos)
		switch {
		case int64(n) == want:
		case err == nil || errors.Is(err, io.EOF):
			// A point shorter than its size must not end a download
			// quietly.
			err = fmt.Errorf("read %d bytes at %d of a %d-byte image, got %d: %w", want, c.pos, c.size, n, io.ErrUnexpectedEOF)
			fallthrough
		default:
			c.buf = c.buf[:0]
			if c.err == nil {
				c.err = err
			}
			return 0, err
		}
		c.buf, c.bufOff = c.buf[:n], c.pos
	}
	n := copy(p, c.buf[c.pos-c.bufOff:])
	c.pos += int64(n)
	return n, nil
}

func (c *chunkedReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += c.pos
	case io.SeekEnd:
		off += c.size
	default:
		return 0, fmt.Errorf("seek: whence %d", whence)
	}
	if off < 0 {
		return 0, fmt.Errorf("seek to %d: negative position", off)
	}
	c.pos = off
	return off, nil
}
