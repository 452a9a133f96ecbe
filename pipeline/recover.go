package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"lifeboat/targets"
)

// Recovery from a storage failure under a replica. An apply that fails on
// a full disk (ENOSPC), a quota (EDQUOT) or an I/O error of the storage
// (EIO, ESTALE from a network mount; EROFS after the file system was
// remounted read-only) leaves the replica's files as a crash would, and
// the file target refuses further writes until the replica is opened
// again. The applier does that itself: it waits until the target's file
// system has room (a local target) or for its backoff, closes the replica,
// opens it from the target (which recovers an interrupted run: torn undo
// log tails cut, uncommitted applies redone from the committed state) and
// applies the segment again. The segment stays in the spool throughout,
// and the spool was fsynced before the agent got its acknowledgement, so
// nothing acknowledged is lost.

// errReopening: the replica is closed after a storage failure and not
// open again yet; the applier retries the reopen.
var errReopening = errors.New("the replica is being reopened after a storage failure; retry in a moment")

// transientIO reports whether err is a storage failure that a reopen
// recovers from once its cause is gone.
func transientIO(err error) bool {
	for _, e := range []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EIO, syscall.ESTALE, syscall.EROFS, errReopening} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// retryAfter waits before the applier tries a failed segment again: the
// backoff, or after a storage failure until the replica has been reopened.
// It returns false when ctx ended.
func (v *volume) retryAfter(ctx context.Context, seg spooledSeg, backoff time.Duration, err error) bool {
	sw, ok := v.rep.(*swappable)
	if !ok || !transientIO(err) {
		return sleepCtx(ctx, backoff)
	}
	log := v.srv.logger().With("volume", v.info.Name)
	wait := sleepCtx
	if errors.Is(err, syscall.ENOSPC) {
		wait = func(ctx context.Context, d time.Duration) bool { return v.srv.waitForRoom(ctx, seg.size, d) }
	}
	if !wait(ctx, backoff) {
		return false
	}
	if err := sw.reopen(func() (targets.Replica, error) { return v.srv.Target.Open(ctx, v.infoNow()) }); err != nil {
		log.Error("reopening the replica after a storage failure failed; retrying", "err", err)
		return ctx.Err() == nil
	}
	st, err := sw.State(ctx)
	if err != nil {
		log.Error("state of the reopened replica", "err", err)
		return ctx.Err() == nil
	}
	v.setApplied(st)
	log.Info("replica reopened after a storage failure; applying again from its committed state",
		"applied_seq", st.Seq, "first_seq", seg.first, "last_seq", seg.last)
	return true
}

// waitForRoom waits at most d for the replicas' file system (a local
// target) to gain room for a segment of size bytes: its free space grows
// by that much and a MiB. It polls every second, so a disk an admin cleans
// up is used again at once rather than after the backoff. Without a local
// target it just waits d. False when ctx ended.
func (s *Server) waitForRoom(ctx context.Context, size int64, d time.Duration) bool {
	dir := s.localDir()
	start, ok, err := s.diskSpace(dir)
	if dir == "" || !ok || err != nil {
		return sleepCtx(ctx, d)
	}
	want := start.Free + size + 1<<20
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return true
		}
		if !sleepCtx(ctx, min(left, time.Second)) {
			return false
		}
		if now, _, err := s.diskSpace(dir); err == nil && now.Free >= want {
			return true
		}
	}
}

// swappable is a volume's replica as the server uses it: the applier
// replaces the replica behind it after a storage failure (reopen) while
// status and point readers go on using it. Between closing the failed
// replica and opening the new one its methods fail with errReopening.
type swappable struct {
	mu     sync.RWMutex
	rep    targets.Replica // nil while reopening
	info   targets.VolumeInfo
	why    error // the last reopen's failure
	closed bool
}

var _ targets.Replica = (*swappable)(nil)

func newSwappable(r targets.Replica) *swappable { return &swappable{rep: r, info: r.Info()} }

// reopen closes the current replica and opens it again with open.
func (w *swappable) reopen(open func() (targets.Replica, error)) error {
	w.mu.Lock()
	old := w.rep
	w.rep, w.why = nil, nil
	w.mu.Unlock()
	if old != nil {
		// A replica that failed may fail to close too; its lock and files
		// are released either way.
		old.Close()
	}
	rep, err := open()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed { // the server closed meanwhile
		if err == nil {
			rep.Close()
		}
		return fmt.Errorf("replica %s: %w", w.info.ID, targets.ErrClosed)
	}
	if err != nil {
		w.why = err
		return err
	}
	w.rep, w.info = rep, rep.Info()
	return nil
}

func (w *swappable) current() (targets.Replica, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return nil, fmt.Errorf("replica %s: %w", w.info.ID, targets.ErrClosed)
	}
	if w.rep == nil {
		if w.why != nil {
			return nil, fmt.Errorf("%w (last attempt: %v)", errReopening, w.why)
		}
		return nil, errReopening
	}
	return w.rep, nil
}

// Info implements targets.Replica.
func (w *swappable) Info() targets.VolumeInfo {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.rep == nil {
		return w.info
	}
	return w.rep.Info()
}

// State implements targets.Replica.
func (w *swappable) State(ctx context.Context) (targets.State, error) {
	r, err := w.current()
	if err != nil {
		return targets.State{}, err
	}
	return r.State(ctx)
}

// Apply implements targets.Replica.
func (w *swappable) Apply(ctx context.Context, extents []targets.Extent) error {
	r, err := w.current()
	if err != nil {
		return err
	}
	return r.Apply(ctx, extents)
}

// Commit implements targets.Replica.
func (w *swappable) Commit(ctx context.Context, st targets.State) error {
	r, err := w.current()
	if err != nil {
		return err
	}
	return r.Commit(ctx, st)
}

// CreatePoint implements targets.Replica.
func (w *swappable) CreatePoint(ctx context.Context, p targets.Point) error {
	r, err := w.current()
	if err != nil {
		return err
	}
	return r.CreatePoint(ctx, p)
}

// Points implements targets.Replica.
func (w *swappable) Points(ctx context.Context) ([]targets.Point, error) {
	r, err := w.current()
	if err != nil {
		return nil, err
	}
	return r.Points(ctx)
}

// OpenPoint implements targets.Replica.
func (w *swappable) OpenPoint(ctx context.Context, seq uint64) (targets.PointReader, error) {
	r, err := w.current()
	if err != nil {
		return nil, err
	}
	return r.OpenPoint(ctx, seq)
}

// ChangedSince implements targets.ChangeLister when the replica does; it
// fails with errors.ErrUnsupported otherwise.
func (w *swappable) ChangedSince(ctx context.Context, seq uint64) ([]targets.Range, error) {
	r, err := w.current()
	if err != nil {
		return nil, err
	}
	cl, ok := r.(targets.ChangeLister)
	if !ok {
		return nil, fmt.Errorf("%w: the target cannot list a replica's changes", errors.ErrUnsupported)
	}
	return cl.ChangedSince(ctx, seq)
}

// DeletePoint implements targets.Replica.
func (w *swappable) DeletePoint(ctx context.Context, seq uint64) error {
	r, err := w.current()
	if err != nil {
		return err
	}
	return r.DeletePoint(ctx, seq)
}

// SetMachine implements targets.Replica.
func (w *swappable) SetMachine(ctx context.Context, machine string) error {
	r, err := w.current()
	if err != nil {
		return err
	}
	return r.SetMachine(ctx, machine)
}

// Usage implements targets.Replica.
func (w *swappable) Usage(ctx context.Context) (int64, error) {
	r, err := w.current()
	if err != nil {
		return 0, err
	}
	return r.Usage(ctx)
}

// Close implements targets.Replica.
func (w *swappable) Close() error {
	w.mu.Lock()
	r := w.rep
	w.rep, w.closed = nil, true
	w.mu.Unlock()
	if r == nil {
		return nil
	}
	return r.Close()
}
