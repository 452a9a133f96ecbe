package nbd

import (
	"errors"
	"os"
	"syscall"
)

// Backend is the storage behind an export. tracker.Volume satisfies it;
// failover and test-failover volumes of later issues do too.
//
// Contract:
//   - Size is fixed while the export is served.
//   - The server checks every range against Size before calling, so a
//     backend sees only 0 <= off, n > 0 and off+n <= Size(); alignment is
//     whatever the client sent (512-byte multiples when the client
//     negotiated block sizes, any byte range otherwise).
//   - Methods are called concurrently, from many connections. Overlapping
//     requests in flight at the same time may complete in any order (the
//     NBD client does not expect otherwise).
//   - ReadAt and WriteAt follow io.ReaderAt and io.WriterAt: a short count
//     comes with an error. p is only valid during the call.
//   - WriteZeroes makes [off, off+n) read as zeros and keeps it allocated;
//     Trim makes it read as zeros and may deallocate it. Both are safe to
//     retry.
//   - Flush makes every write, zero and trim that completed before it was
//     called durable, whichever connection sent it (the server advertises
//     multi-conn on this promise).
//   - Errors: one wrapping syscall.ENOSPC, EDQUOT or EFBIG is answered
//     with NBD_ENOSPC; EPERM, EROFS or EACCES with NBD_EPERM; os.ErrClosed
//     (the backend was closed under the server) with NBD_ESHUTDOWN, which
//     tells the client to disconnect; anything else with NBD_EIO. The
//     connection stays up either way.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, n int64) error
	Trim(off, n int64) error
	Flush() error
	Size() int64
}

// Extent is a range of an export that is either data or a hole (reads as
// zeros and holds no storage).
type Extent struct {
	Offset, Length int64
	Hole           bool
}

// Extenter is implemented by a Backend that can tell holes from data; the
// server then answers NBD_CMD_BLOCK_STATUS for base:allocation from it
// (a hole is reported as HOLE|ZERO). A backend without it reports every
// range as data, which is always correct.
//
// Extents describes [off, off+n) in order, starting at off; it may stop
// early, but must return at least one extent with a positive length when
// it returns no error.
type Extenter interface {
	Extents(off, n int64) ([]Extent, error)
}

// extentLike is any struct type with Extent's exact fields, such as
// tracker.Extent; such a value converts to Extent without copying by hand.
type extentLike interface {
	~struct {
		Offset, Length int64
		Hole           bool
	}
}

// WithExtents returns b with base:allocation answered by fn. It lets a
// backend whose Extents method returns its own extent type (tracker.Volume
// returns []tracker.Extent) serve block status without this package
// importing the backend's package:
//
//	srv.Exports = []nbd.Export{{Name: "disk", Backend: nbd.WithExtents(vol, vol.Extents)}}
func WithExtents[E extentLike](b Backend, fn func(off, n int64) ([]E, error)) Backend {
	return extentBackend[E]{Backend: b, fn: fn}
}

type extentBackend[E extentLike] struct {
	Backend
	fn func(off, n int64) ([]E, error)
}

func (b extentBackend[E]) Extents(off, n int64) ([]Extent, error) {
	in, err := b.fn(off, n)
	if err != nil {
		return nil, err
	}
	out := make([]Extent, len(in))
	for i, e := range in {
		out[i] = Extent(e)
	}
	return out, nil
}

// errno maps a backend error to the NBD error sent to the client.
func errno(err error) uint32 {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES):
		return errPerm
	case errors.Is(err, os.ErrClosed):
		return errShutdown
	}
	return errIO
}
