// Package failback is the primary site's side of failback: the master
// target that takes reverse replication from the recovery site onto the
// primary machine's original disks, and the delta computation that limits
// what has to be sent back.
package failback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"lifeboat/hrl"
	"lifeboat/internal/dirlock"
	"lifeboat/targets"
)

// Errors of this package.
var (
	ErrGeometry     = errors.New("volume geometry differs")
	ErrMachineFixed = errors.New("the writer of a primary volume is fixed by the master target's configuration")
)

// Disk is one primary volume the master target may write.
type Disk struct {
	// Info is the primary volume's ID, Name, Size and BlockSize; Machine is
	// the name (certificate CN) allowed to write it: the recovery site.
	Info targets.VolumeInfo
	// Path is the primary disk or file. It must exist and hold at least
	// Info.Size bytes; it is never created, truncated or resized.
	Path string
}

// DiskTarget is a targets.Target whose replicas are the primary machine's
// own disks, for the process server of the master target. It opens only
// the configured disks and keeps each one's committed state in
// stateDir/<id>.json (and a flock on stateDir/<id>.lock while open).
//
// Durability: Apply writes into the page cache only; Commit and
// CreatePoint fsync the disk, then replace the state file durably (temp
// file, fsync, rename, fsync of stateDir). Applying records again after a
// crash is idempotent because Apply overwrites in place.
//
// A primary disk keeps no history: its only recovery point is the latest,
// readable while nothing has been applied after it.
type DiskTarget struct {
	fs    hrl.FS
	dir   string
	disks []Disk
	byID  map[string]Disk

	mu      sync.Mutex
	open    map[string]*diskReplica
	retired map[string]string // volume id -> why it takes no more writes
	closed  bool
}

// Retire refuses every later Apply and Open of volume id with why: the
// disk was handed back to its agent (a failback), and a segment still in
// flight must not write it.
func (t *DiskTarget) Retire(id, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.retired == nil {
		t.retired = map[string]string{}
	}
	t.retired[id] = why
}

// retiredErr is Retire's refusal, nil for a volume still in use.
func (t *DiskTarget) retiredErr(id string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if why, ok := t.retired[id]; ok {
		return fmt.Errorf("%w: volume %s takes no more reverse replication: %s", targets.ErrClosed, id, why)
	}
	return nil
}

var _ targets.Target = (*DiskTarget)(nil)

// NewDiskTarget returns a target over disks, keeping state in stateDir
// (created, mode 0700). The disks are opened by Open.
func NewDiskTarget(stateDir string, disks []Disk) (*DiskTarget, error) {
	t := &DiskTarget{fs: hrl.OSFS{}, dir: stateDir, disks: disks, byID: map[string]Disk{}, open: map[string]*diskReplica{}}
	for _, d := range disks {
		id := d.Info.ID
		switch {
		case id == "" || id == "." || id == ".." || strings.ContainsAny(id, `/\`):
			return nil, fmt.Errorf("master target: disk %s: volume id %q is not a valid id", d.Path, id)
		case d.Path == "" || d.Info.Size <= 0 || d.Info.BlockSize <= 0:
			return nil, fmt.Errorf("master target: volume %s: path %q, size %d, block size %d: want a path and sizes > 0", id, d.Path, d.Info.Size, d.Info.BlockSize)
		case d.Info.Machine == "":
			return nil, fmt.Errorf("master target: volume %s has no machine; name the recovery site allowed to write it", id)
		case t.byID[id].Path != "":
			return nil, fmt.Errorf("master target: volume %s is configured twice", id)
		}
		t.byID[id] = d
	}
	if err := t.fs.MkdirAll(stateDir, hrl.PrivateDir); err != nil {
		return nil, fmt.Errorf("master target state: %w", err)
	}
	return t, nil
}

// Properties implements targets.Target.
func (t *DiskTarget) Properties() targets.Properties { return targets.Properties{Alignment: 1} }

// Volumes implements targets.Target: the configured disks.
func (t *DiskTarget) Volumes(ctx context.Context) ([]targets.VolumeInfo, error) {
	out := make([]targets.VolumeInfo, len(t.disks))
	for i, d := range t.disks {
		out[i] = d.Info
	}
	return out, nil
}

// Open implements targets.Target. Only a configured disk opens, only for a
// volume of its size and block size, and its Info is the configured one.
// The disk is opened read-write, never created, truncated or resized.
func (t *DiskTarget) Open(ctx context.Context, info targets.VolumeInfo) (targets.Replica, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, ok := t.byID[info.ID]
	if !ok {
		names := make([]string, len(t.disks))
		for i, d := range t.disks {
			names[i] = fmt.Sprintf("%s (id %s)", d.Info.Name, d.Info.ID)
		}
		return nil, fmt.Errorf("%w: volume id %s is not a primary volume of this master target, which has %s; reverse replication must go to the primary volume the failover came from",
			targets.ErrNotFound, info.ID, strings.Join(names, ", "))
	}
	if info.Size != d.Info.Size {
		return nil, fmt.Errorf("%w: the primary volume %s is %d bytes, the failover volume is %d bytes; reverse replication needs the same size", ErrGeometry, d.Info.Name, d.Info.Size, info.Size)
	}
	if info.BlockSize != d.Info.BlockSize {
		return nil, fmt.Errorf("%w: the primary volume %s has block size %d, the failover volume %d; reverse replication needs the same block size", ErrGeometry, d.Info.Name, d.Info.BlockSize, info.BlockSize)
	}
	if err := t.retiredErr(d.Info.ID); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("open volume %s: %w", d.Info.ID, targets.ErrClosed)
	}
	if t.open[d.Info.ID] != nil {
		return nil, fmt.Errorf("open volume %s: %w", d.Info.ID, targets.ErrInUse)
	}
	r := &diskReplica{t: t, info: d.Info, unlock: func() {}}
	if err := r.open(d.Path); err != nil {
		r.closeFiles()
		return nil, fmt.Errorf("open primary volume %s: %w", d.Info.Name, err)
	}
	t.open[d.Info.ID] = r
	return r, nil
}

// Close implements targets.Target: it closes the replicas still open.
func (t *DiskTarget) Close() error {
	t.mu.Lock()
	t.closed = true
	rs := make([]*diskReplica, 0, len(t.open))
	for _, r := range t.open {
		rs = append(rs, r)
	}
	t.mu.Unlock()
	return targets.CloseAll(rs)
}

// diskState is stateDir/<id>.json.
type diskState struct {
	ID         string     `json:"id"`
	Generation uint64     `json:"generation"`
	Seq        uint64     `json:"seq"`
	Point      *diskPoint `json:"point,omitempty"` // the latest recovery point
	Intact     bool       `json:"point_intact"`    // nothing applied since Point
}

// diskPoint is a targets.Point with json keys (convertible to and from it).
type diskPoint struct {
	Seq        uint64      `json:"seq"`
	Generation uint64      `json:"generation"`
	Kind       hrl.TagKind `json:"kind"`
	Name       string      `json:"name"`
	Time       time.Time   `json:"time"`
}

// diskReplica is an open primary disk. mu guards the fields below it;
// Apply holds it for writing, so a point read never sees half an Apply.
type diskReplica struct {
	t      *DiskTarget
	info   targets.VolumeInfo // the configured Disk.Info
	unlock func()

	mu     sync.RWMutex
	f      hrl.File
	size   int64 // the disk's size, >= info.Size
	st     diskState
	closed bool
}

var _ targets.Replica = (*diskReplica)(nil)

// open locks the volume's state, opens the disk and loads the state.
func (r *diskReplica) open(path string) error {
	id, state := r.info.ID, filepath.Join(r.t.dir, r.info.ID+".json")
	unlock, err := dirlock.Lock(filepath.Join(r.t.dir, id+".lock"))
	if errors.Is(err, dirlock.ErrLocked) {
		return fmt.Errorf("its state is %v; stop that master target first: %w", err, targets.ErrInUse)
	} else if err != nil {
		return err
	}
	r.unlock = unlock
	if r.f, err = r.t.fs.OpenFile(path, os.O_RDWR, 0); err != nil {
		return err
	}
	if r.size, err = r.f.Size(); err != nil {
		return err
	} else if r.size < r.info.Size {
		return fmt.Errorf("%w: %s holds %d bytes, less than the volume's %d; check the configured path", ErrGeometry, path, r.size, r.info.Size)
	}
	r.st = diskState{ID: id}
	b, err := os.ReadFile(state)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &r.st); err != nil || r.st.ID != id {
		return fmt.Errorf("%s is damaged or not this volume's (%v, id %q); remove it and restart reverse replication of this volume from the beginning", state, err, r.st.ID)
	}
	return nil
}

// Info implements targets.Replica.
func (r *diskReplica) Info() targets.VolumeInfo { return r.info }

// usable checks, with mu held, that the replica is open and ctx is live.
func (r *diskReplica) usable(ctx context.Context) error {
	if r.closed {
		return fmt.Errorf("volume %s: %w", r.info.ID, targets.ErrClosed)
	}
	return ctx.Err()
}

// setState saves st durably, then makes it current.
func (r *diskReplica) setState(st diskState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = hrl.WriteFileDurably(r.t.fs, r.t.dir, st.ID+".json", append(b, '\n'))
	}
	if err != nil {
		return fmt.Errorf("volume %s: %w", r.info.ID, err)
	}
	r.st = st
	return nil
}

// State implements targets.Replica.
func (r *diskReplica) State(ctx context.Context) (targets.State, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return targets.State{Generation: r.st.Generation, Seq: r.st.Seq}, r.usable(ctx)
}

// Apply implements targets.Replica: pwrite into the page cache; nothing is
// fsynced. Zero and trim extents write zeros (no holes in a user's disk).
// The first Apply after a point durably marks the disk as moved past it.
func (r *diskReplica) Apply(ctx context.Context, extents []targets.Extent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	if err := r.t.retiredErr(r.info.ID); err != nil {
		return err
	}
	for _, e := range extents {
		n := e.Len
		if e.Data != nil {
			n = int64(len(e.Data))
		}
		if e.Off < 0 || n < 0 || e.Off > r.info.Size-n {
			return fmt.Errorf("apply to %s: [%d, +%d) of %d bytes: %w", r.info.ID, e.Off, n, r.info.Size, targets.ErrOutOfRange)
		}
	}
	if r.st.Intact {
		st := r.st
		st.Intact = false
		if err := r.setState(st); err != nil {
			return err
		}
	}
	for _, e := range extents {
		var err error
		if e.Data != nil {
			_, err = r.f.WriteAt(e.Data, e.Off)
		} else {
			err = hrl.WriteZeros(r.f, e.Off, e.Len)
		}
		if err != nil {
			return fmt.Errorf("apply to %s: %w", r.info.ID, err)
		}
	}
	return nil
}

// Commit implements targets.Replica: fsync the disk, then the state file.
func (r *diskReplica) Commit(ctx context.Context, st targets.State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	if err := r.f.Sync(); err != nil {
		return fmt.Errorf("commit %s: %w", r.info.ID, err)
	}
	ns := r.st
	ns.Generation, ns.Seq = st.Generation, st.Seq
	return r.setState(ns)
}

// CreatePoint implements targets.Replica: fsync the disk, then record the
// state {p.Generation, p.Seq} and p as the latest (only) point.
func (r *diskReplica) CreatePoint(ctx context.Context, p targets.Point) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return err
	}
	if old := r.st.Point; old != nil && old.Seq == p.Seq {
		if targets.SamePoint(targets.Point(*old), p) {
			return nil
		}
		return fmt.Errorf("create point %d of %s: %w", p.Seq, r.info.ID, targets.ErrPointExists)
	}
	if p.Seq < r.st.Seq {
		return fmt.Errorf("create point %d of %s: the disk is at seq %d already, past the point", p.Seq, r.info.ID, r.st.Seq)
	}
	if err := r.f.Sync(); err != nil {
		return fmt.Errorf("create point %d of %s: %w", p.Seq, r.info.ID, err)
	}
	dp := diskPoint(p)
	return r.setState(diskState{ID: r.info.ID, Generation: p.Generation, Seq: p.Seq, Point: &dp, Intact: true})
}

// Points implements targets.Replica: the latest point, if any.
func (r *diskReplica) Points(ctx context.Context) ([]targets.Point, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.usable(ctx); err != nil || r.st.Point == nil {
		return nil, err
	}
	return []targets.Point{targets.Point(*r.st.Point)}, nil
}

// readable checks, with mu held, that the disk still is point seq.
func (r *diskReplica) readable(seq uint64) error {
	if r.closed {
		return fmt.Errorf("volume %s: %w", r.info.ID, targets.ErrClosed)
	}
	if p := r.st.Point; p == nil || p.Seq != seq || r.st.Seq != seq || !r.st.Intact {
		return fmt.Errorf("%w: recovery point %d of primary volume %s: a primary disk keeps no history, only its latest point until something is applied after it",
			targets.ErrNotFound, seq, r.info.Name)
	}
	return nil
}

// OpenPoint implements targets.Replica: a reader of the disk itself, whose
// reads fail with ErrNotFound once anything is applied after the point.
func (r *diskReplica) OpenPoint(ctx context.Context, seq uint64) (targets.PointReader, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.readable(seq); err != nil {
		return nil, err
	}
	return &diskPointReader{r: r, p: targets.Point(*r.st.Point), sr: io.NewSectionReader(r.f, 0, r.info.Size)}, nil
}

// DeletePoint implements targets.Replica: the latest point is forgotten;
// any other seq is not there, which is success.
func (r *diskReplica) DeletePoint(ctx context.Context, seq uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil || r.st.Point == nil || r.st.Point.Seq != seq {
		return err
	}
	st := r.st
	st.Point, st.Intact = nil, false
	return r.setState(st)
}

// SetMachine implements targets.Replica by refusing.
func (r *diskReplica) SetMachine(ctx context.Context, machine string) error {
	return fmt.Errorf("set machine of primary volume %s to %q: %w (to %q); change the master target's configuration instead",
		r.info.Name, machine, ErrMachineFixed, r.info.Machine)
}

// Usage implements targets.Replica: the disk's size.
func (r *diskReplica) Usage(ctx context.Context) (int64, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.size, r.usable(ctx)
}

// Close implements targets.Replica. It does not commit.
func (r *diskReplica) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	err := r.closeFiles()
	r.mu.Unlock()
	r.t.mu.Lock()
	delete(r.t.open, r.info.ID)
	r.t.mu.Unlock()
	return err
}

func (r *diskReplica) closeFiles() (err error) {
	if r.f != nil {
		err = r.f.Close()
	}
	r.unlock()
	return err
}

// diskPointReader reads the disk, bounded to the volume's size, while it
// still is its point.
type diskPointReader struct {
	r  *diskReplica
	p  targets.Point
	sr *io.SectionReader
}

func (pr *diskPointReader) Point() targets.Point { return pr.p }
func (pr *diskPointReader) Size() int64          { return pr.sr.Size() }
func (pr *diskPointReader) Close() error         { return nil }

func (pr *diskPointReader) ReadAt(b []byte, off int64) (int, error) {
	pr.r.mu.RLock()
	defer pr.r.mu.RUnlock()
	if err := pr.r.readable(pr.p.Seq); err != nil {
		return 0, err
	}
	return pr.sr.ReadAt(b, off)
}
