package file

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// Replica is an open replica of the file target.
//
// Locking: wmu serialises the mutating calls (Apply, Commit, CreatePoint,
// DeletePoint, Close); only its holder changes points, logs and the
// indexes, so it may read them without mu. mu guards them against readers:
// the holder of wmu takes mu for writing around every change a reader could
// observe (index updates together with the replica.img writes they
// protect, the point list), and a point read holds mu for reading for the
// duration of one ReadAt.
type Replica struct {
	t      *Target
	fs     hrl.FS
	dir    string
	log    *slog.Logger
	unlock func()

	wmu    sync.Mutex
	failed error // an I/O error left files in an unknown state; reopen

	mu     sync.RWMutex
	info   targets.VolumeInfo
	state  targets.State
	points []pointRecord
	logs   []*undoLog // logs[i] is the undo log of points[i]
	img    hrl.File
	closed bool

	pend  map[int64]struct{} // Apply's scratch: blocks logged in this chunk
	refs  []ref              // Apply's scratch: their entries
	batch []targets.Extent   // Apply's scratch: the extents they protect
}

var _ targets.Replica = (*Replica)(nil)

// Info implements targets.Replica.
func (r *Replica) Info() targets.VolumeInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.info
}

// State implements targets.Replica.
func (r *Replica) State(ctx context.Context) (targets.State, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return targets.State{}, fmt.Errorf("replica %s: %w", r.info.ID, targets.ErrClosed)
	}
	return r.state, nil
}

// usable checks, with wmu held, that a mutating call may proceed.
func (r *Replica) usable(ctx context.Context) error {
	if r.closed {
		return fmt.Errorf("replica %s: %w", r.info.ID, targets.ErrClosed)
	}
	if r.failed != nil {
		return fmt.Errorf("replica %s: an earlier write failed, close and open it again to recover: %w", r.info.ID, r.failed)
	}
	return ctx.Err()
}

// fail records an I/O error that leaves the files in an unknown state.
func (r *Replica) fail(err error) error {
	if err != nil && r.failed == nil {
		r.failed = err
	}
	return err
}

// save writes state.json with the current info, state st and the given
// points and logs. Every log's size must be durable.
func (r *Replica) save(st0 targets.State, points []pointRecord, logs []*undoLog) error {
	st := stateFile{Volume: r.info, Generation: st0.Generation, Seq: st0.Seq,
		Points: make([]pointRecord, len(points))}
	for i, p := range points {
		p.UndoBytes = logs[i].size
		st.Points[i] = p
	}
	return saveState(r.fs, r.dir, st)
}

// Commit implements targets.Replica: fsync replica.img, then record st.
func (r *Replica) Commit(ctx context.Context, st targets.State) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	if err := r.img.Sync(); err != nil {
		return r.fail(fmt.Errorf("commit %s: replica image: %w", r.info.ID, err))
	}
	if err := r.save(st, r.points, r.logs); err != nil {
		return r.fail(fmt.Errorf("commit %s: %w", r.info.ID, err))
	}
	r.setState(st)
	return nil
}

// SetMachine implements targets.Replica: state.json records the new owner.
func (r *Replica) SetMachine(ctx context.Context, machine string) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	r.mu.Lock()
	old := r.info.Machine
	r.info.Machine = machine
	r.mu.Unlock()
	if err := r.save(r.state, r.points, r.logs); err != nil {
		r.mu.Lock()
		r.info.Machine = old
		r.mu.Unlock()
		return fmt.Errorf("set machine of %s: %w", r.info.ID, err)
	}
	return nil
}

func (r *Replica) setState(st targets.State) {
	r.mu.Lock()
	r.state = st
	r.mu.Unlock()
}

func (r *Replica) find(seq uint64) (int, bool) {
	i := sort.Search(len(r.points), func(i int) bool { return r.points[i].Seq >= seq })
	return i, i < len(r.points) && r.points[i].Seq == seq
}

// CreatePoint implements targets.Replica: fsync replica.img, create the
// point's empty undo log, then record the point and the state
// {p.Generation, p.Seq} in state.json. From then on, the first overwrite
// of each block saves its before-image in the new log.
func (r *Replica) CreatePoint(ctx context.Context, p targets.Point) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	if i, ok := r.find(p.Seq); ok {
		if targets.SamePoint(r.points[i].point(), p) {
			return nil
		}
		return fmt.Errorf("create point %d of %s: %w", p.Seq, r.info.ID, targets.ErrPointExists)
	}
	if n := len(r.points); n > 0 && r.points[n-1].Seq > p.Seq {
		return fmt.Errorf("create point %d of %s: the newest point is %d; points are created in seq order", p.Seq, r.info.ID, r.points[n-1].Seq)
	}
	if p.Seq < r.state.Seq {
		return fmt.Errorf("create point %d of %s: the replica is at seq %d already, past the point", p.Seq, r.info.ID, r.state.Seq)
	}
	if err := r.img.Sync(); err != nil {
		return r.fail(fmt.Errorf("create point %d of %s: replica image: %w", p.Seq, r.info.ID, err))
	}
	udir := filepath.Join(r.dir, undoDirName)
	path := filepath.Join(udir, undoName(p.Seq))
	f, err := r.fs.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, hrl.PrivateFile)
	if err != nil {
		return r.fail(fmt.Errorf("create point %d of %s: undo log: %w", p.Seq, r.info.ID, err))
	}
	if err := r.fs.SyncDir(udir); err != nil {
		f.Close()
		return r.fail(fmt.Errorf("create point %d of %s: undo log: %w", p.Seq, r.info.ID, err))
	}
	u := &undoLog{seq: p.Seq, path: path, f: f, open: map[int64]ref{}}
	rec := pointRecord{Seq: p.Seq, Generation: p.Generation, Kind: p.Kind, Name: p.Name, Time: p.Time, Size: r.info.Size}
	st := targets.State{Generation: p.Generation, Seq: p.Seq}
	if err := r.save(st, append(r.points[:len(r.points):len(r.points)], rec), append(r.logs[:len(r.logs):len(r.logs)], u)); err != nil {
		f.Close()
		return r.fail(fmt.Errorf("create point %d of %s: %w", p.Seq, r.info.ID, err))
	}
	r.mu.Lock()
	var closed *undoLog
	if n := len(r.logs); n > 0 {
		closed = r.logs[n-1]
		closed.setOpen(false)
	}
	r.points = append(r.points, rec)
	r.logs = append(r.logs, u)
	r.state = st
	r.mu.Unlock()
	if closed != nil {
		r.writeIndex(closed)
	}
	return nil
}

// Points implements targets.Replica.
func (r *Replica) Points(ctx context.Context) ([]targets.Point, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return nil, fmt.Errorf("replica %s: %w", r.info.ID, targets.ErrClosed)
	}
	out := make([]targets.Point, len(r.points))
	for i, p := range r.points {
		out[i] = p.point()
	}
	return out, nil
}

// Close implements targets.Replica. It does not commit: what was applied
// since the last Commit is applied again after the next Open.
func (r *Replica) Close() error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	err := r.closeFiles()
	r.mu.Unlock()
	if r.unlock != nil {
		r.unlock()
	}
	r.t.forget(r.info.ID, r)
	if err != nil {
		return fmt.Errorf("close replica %s: %w", r.info.ID, err)
	}
	return nil
}

func (r *Replica) closeFiles() error {
	var errs []error
	if r.img != nil {
		errs = append(errs, r.img.Close())
	}
	for _, u := range r.logs {
		errs = append(errs, u.f.Close())
	}
	return errors.Join(errs...)
}
