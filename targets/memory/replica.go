package memory

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"

	"lifeboat/targets"
)

// Replica is an open replica of the in-memory target.
type Replica struct {
	v      *volume
	mu     sync.Mutex
	closed bool
}

var _ targets.Replica = (*Replica)(nil)

// check returns ErrClosed after Close. Callers hold no lock.
func (r *Replica) check() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("replica %s: %w", r.v.info.ID, targets.ErrClosed)
	}
	return nil
}

// Info implements targets.Replica.
func (r *Replica) Info() targets.VolumeInfo {
	r.v.mu.RLock()
	defer r.v.mu.RUnlock()
	return r.v.info
}

// State implements targets.Replica.
func (r *Replica) State(ctx context.Context) (targets.State, error) {
	if err := r.check(); err != nil {
		return targets.State{}, err
	}
	r.v.mu.RLock()
	defer r.v.mu.RUnlock()
	return r.v.state, nil
}

// Apply implements targets.Replica.
func (r *Replica) Apply(ctx context.Context, extents []targets.Extent) error {
	if err := r.check(); err != nil {
		return err
	}
	v := r.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := targets.CheckExtents(extents, v.info.Size, targets.Properties{Alignment: 1}); err != nil {
		return fmt.Errorf("apply to %s: %w", v.info.ID, err)
	}
	for _, e := range extents {
		v.write(e.Off, e.Length(), e.Data)
	}
	return nil
}

// Commit implements targets.Replica.
func (r *Replica) Commit(ctx context.Context, st targets.State) error {
	if err := r.check(); err != nil {
		return err
	}
	r.v.mu.Lock()
	defer r.v.mu.Unlock()
	r.v.state = st
	return nil
}

// SetMachine implements targets.Replica.
func (r *Replica) SetMachine(ctx context.Context, machine string) error {
	if err := r.check(); err != nil {
		return err
	}
	r.v.mu.Lock()
	defer r.v.mu.Unlock()
	r.v.info.Machine = machine
	return nil
}

// CreatePoint implements targets.Replica.
func (r *Replica) CreatePoint(ctx context.Context, p targets.Point) error {
	if err := r.check(); err != nil {
		return err
	}
	v := r.v
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, q := range v.points {
		if q.Seq == p.Seq {
			if targets.SamePoint(q.Point, p) {
				return nil
			}
			return fmt.Errorf("create point %d of %s: %w", p.Seq, v.info.ID, targets.ErrPointExists)
		}
	}
	if n := len(v.points); n > 0 && v.points[n-1].Seq > p.Seq {
		return fmt.Errorf("create point %d of %s: the newest point is %d; points are created in seq order", p.Seq, v.info.ID, v.points[n-1].Seq)
	}
	if p.Seq < v.state.Seq {
		return fmt.Errorf("create point %d of %s: the replica is at seq %d already, past the point", p.Seq, v.info.ID, v.state.Seq)
	}
	v.state = targets.State{Generation: p.Generation, Seq: p.Seq}
	v.points = append(v.points, &point{Point: p, epoch: v.epoch, size: v.info.Size})
	v.epoch++
	return nil
}

// Points implements targets.Replica.
func (r *Replica) Points(ctx context.Context) ([]targets.Point, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	r.v.mu.RLock()
	defer r.v.mu.RUnlock()
	out := make([]targets.Point, len(r.v.points))
	for i, p := range r.v.points {
		out[i] = p.Point
	}
	return out, nil
}

func (v *volume) find(seq uint64) (int, bool) {
	i := sort.Search(len(v.points), func(i int) bool { return v.points[i].Seq >= seq })
	return i, i < len(v.points) && v.points[i].Seq == seq
}

// OpenPoint implements targets.Replica.
func (r *Replica) OpenPoint(ctx context.Context, seq uint64) (targets.PointReader, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	r.v.mu.RLock()
	defer r.v.mu.RUnlock()
	i, ok := r.v.find(seq)
	if !ok {
		return nil, fmt.Errorf("open point %d of %s: %w", seq, r.v.info.ID, targets.ErrNotFound)
	}
	return &pointReader{r: r, v: r.v, p: r.v.points[i]}, nil
}

// DeletePoint implements targets.Replica.
func (r *Replica) DeletePoint(ctx context.Context, seq uint64) error {
	if err := r.check(); err != nil {
		return err
	}
	v := r.v
	v.mu.Lock()
	defer v.mu.Unlock()
	i, ok := v.find(seq)
	if !ok {
		return fmt.Errorf("delete point %d of %s: %w", seq, v.info.ID, targets.ErrNotFound)
	}
	v.points[i].deleted = true
	v.points = append(v.points[:i], v.points[i+1:]...)
	v.prune()
	return nil
}

// Usage implements targets.Replica: the bytes of stored block versions.
func (r *Replica) Usage(ctx context.Context) (int64, error) {
	if err := r.check(); err != nil {
		return 0, err
	}
	r.v.mu.RLock()
	defer r.v.mu.RUnlock()
	return r.v.usage(), nil
}

// Close implements targets.Replica; the volume stays in the Target.
func (r *Replica) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.v.mu.Lock()
	r.v.open = false
	r.v.mu.Unlock()
	return nil
}

type pointReader struct {
	r *Replica
	v *volume
	p *point
}

func (pr *pointReader) Point() targets.Point { return pr.p.Point }
func (pr *pointReader) Size() int64          { return pr.p.size }
func (pr *pointReader) Close() error         { return nil }

// ReadAt implements io.ReaderAt with os.File semantics at the end.
func (pr *pointReader) ReadAt(p []byte, off int64) (int, error) {
	if err := pr.r.check(); err != nil {
		return 0, err
	}
	pr.v.mu.RLock()
	defer pr.v.mu.RUnlock()
	if pr.p.deleted {
		return 0, fmt.Errorf("read point %d of %s: %w", pr.p.Seq, pr.v.info.ID, targets.ErrNotFound)
	}
	if off < 0 {
		return 0, fmt.Errorf("read point %d: negative offset %d", pr.p.Seq, off)
	}
	if off >= pr.p.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), pr.p.size-off)
	pr.v.readAt(p[:n], off, pr.p.epoch)
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
