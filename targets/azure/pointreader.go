package azure

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"lifeboat/targets"
)

// DefaultReadTimeout and DefaultReadRate give a point read's deadline when
// Options.ReadTimeout is 0: a minute plus a second per MiB read.
const (
	DefaultReadTimeout = time.Minute
	DefaultReadRate    = 1 << 20 // bytes per second
)

// pointReader reads one snapshot. Its context is cancelled by Close, which
// ends reads in flight; each ReadAt also has a deadline (readTimeout), so a
// hung connection cannot block a reader (an NBD or FUSE request) forever.
type pointReader struct {
	r      *Replica
	pb     *pageblob.Client
	s      snap
	ctx    context.Context
	cancel context.CancelFunc
}

func newPointReader(r *Replica, pb *pageblob.Client, s snap) *pointReader {
	ctx, cancel := context.WithCancel(context.Background())
	return &pointReader{r: r, pb: pb, s: s, ctx: ctx, cancel: cancel}
}

func (p *pointReader) Point() targets.Point { return p.s.p }
func (p *pointReader) Size() int64          { return p.s.size }

// Close ends reads in flight; later reads fail with targets.ErrClosed.
func (p *pointReader) Close() error {
	p.cancel()
	return nil
}

// readTimeout is the deadline of one read of n bytes.
func (t *Target) readTimeout(n int64) time.Duration {
	if t.opts.ReadTimeout > 0 {
		return t.opts.ReadTimeout
	}
	return DefaultReadTimeout + time.Duration(n/DefaultReadRate)*time.Second
}

// ReadAt reads like os.File.ReadAt: short reads at the end with io.EOF.
func (p *pointReader) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("azure point %d: negative offset %d", p.s.p.Seq, off)
	}
	if p.ctx.Err() != nil {
		return 0, fmt.Errorf("azure point %d: reader closed: %w", p.s.p.Seq, targets.ErrClosed)
	}
	if err := p.r.checkOpen(); err != nil {
		return 0, err
	}
	if off >= p.s.size {
		return 0, io.EOF
	}
	n := min(int64(len(b)), p.s.size-off)
	g := p.r.grain()
	lo, hi := off/g*g, alignUp(off+n, g)
	buf := make([]byte, hi-lo)
	ctx, cancel := context.WithTimeout(p.ctx, p.r.t.readTimeout(hi-lo))
	defer cancel()
	if err := p.r.readAt(ctx, p.pb, buf, lo); err != nil {
		if p.ctx.Err() != nil {
			return 0, fmt.Errorf("azure point %d: reader closed during the read: %w", p.s.p.Seq, targets.ErrClosed)
		}
		return 0, fmt.Errorf("azure point %d: %w", p.s.p.Seq, err)
	}
	copy(b, buf[off-lo:off-lo+n])
	if n < int64(len(b)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
