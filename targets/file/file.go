// Package file is the embedded default target: replicas in a directory on
// a local disk or a NAS mount.
//
// Each volume lives in DIR/<volume id>/:
//
//	replica.img   sparse raw image, always the latest applied content (an
//	              admin can loop-mount it after a failover)
//	state.json    volume info, committed state, recovery points (replaced
//	              atomically: write temp, fsync, rename, fsync dir)
//	undo/         one undo log per recovery point (see undo.go)
//	lock          flock held while a process has the replica open
//
// Recovery points are kept with undo logs (copy on first write): after a
// point P_n, the first overwrite of each 4 KiB block appends the block's
// before-image to P_n's undo log, fsyncs it, and only then writes
// replica.img. Reading point P_i looks for each block in the undo logs of
// P_i, P_i+1, ..., P_n (first hit wins), else in replica.img, so a point
// opens in constant time and storage grows with the data changed, not with
// the number of points. Before the first point nothing is logged, so the
// initial replication costs one write per extent. File I/O goes through
// the hrl.FS seam, so tests can inject faults and simulate power loss.
package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"lifeboat/hrl"
	"lifeboat/internal/dirlock"
	"lifeboat/targets"
)

// blockSize is the granularity of undo logging.
const blockSize = 4096

// Errors of this package.
var (
	// ErrCorrupt marks damaged replica files (state.json, an undo log
	// before its recorded length); they are never silently skipped.
	ErrCorrupt = errors.New("replica files damaged")
)

// Target is a directory holding replicas. Set the exported fields after
// New and before the first Open.
type Target struct {
	Dir    string
	FS     hrl.FS       // default hrl.OSFS{}
	Logger *slog.Logger // default slog.Default()

	mu      sync.Mutex
	open    map[string]*Replica
	closed  bool
	damaged sync.Map // replica directories Volumes skipped, warned about once
}

var _ targets.Target = (*Target)(nil)

// New returns a Target for dir with default settings.
func New(dir string) *Target {
	return &Target{Dir: dir, FS: hrl.OSFS{}}
}

func (t *Target) logger() *slog.Logger {
	if t.Logger == nil {
		return slog.Default()
	}
	return t.Logger
}

// Properties implements targets.Target: byte-addressable, no limit on an
// extent, points kept by the target itself.
func (t *Target) Properties() targets.Properties {
	return targets.Properties{Alignment: 1, MaxExtent: 0, Snapshots: false}
}

func checkID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, `/\`) || strings.HasSuffix(id, ".tmp") {
		return fmt.Errorf("volume id %q cannot name a replica directory", id)
	}
	return nil
}

// Open implements targets.Target. It creates DIR/<id>/ with an empty
// sparse replica.img when there is none, recovers from an interrupted run
// (cuts torn undo log tails, removes undo logs no point lists), and resizes
// the replica when info.Size differs from the recorded size.
func (t *Target) Open(ctx context.Context, info targets.VolumeInfo) (targets.Replica, error) {
	if err := checkID(info.ID); err != nil {
		return nil, fmt.Errorf("open replica: %w", err)
	}
	if info.Size < 0 {
		return nil, fmt.Errorf("open replica %s: negative size %d", info.ID, info.Size)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("open replica %s: %w", info.ID, targets.ErrClosed)
	}
	if t.open[info.ID] != nil {
		return nil, fmt.Errorf("open replica %s: it is open already in this process: %w", info.ID, targets.ErrInUse)
	}
	if t.FS == nil {
		t.FS = hrl.OSFS{}
	}
	dir := filepath.Join(t.Dir, info.ID)
	if err := t.FS.MkdirAll(filepath.Join(dir, undoDirName), hrl.PrivateDir); err != nil {
		return nil, fmt.Errorf("open replica %s: %w", info.ID, err)
	}
	unlock, err := lockDir(t.FS, dir)
	if err != nil {
		return nil, fmt.Errorf("open replica %s: %w", info.ID, err)
	}
	t.makePrivate(dir, info.ID)
	r, err := openReplica(t, dir, info)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("open replica %s: %w", info.ID, err)
	}
	r.unlock = unlock
	if t.open == nil {
		t.open = map[string]*Replica{}
	}
	t.open[info.ID] = r
	return r, nil
}

// Volumes implements targets.Target: the volumes with a replica directory
// holding a state.json, sorted by id.
func (t *Target) Volumes(ctx context.Context) ([]targets.VolumeInfo, error) {
	fsys := t.FS
	if fsys == nil {
		fsys = hrl.OSFS{}
	}
	names, err := fsys.ReadDir(t.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	var out []targets.VolumeInfo
	for _, name := range names {
		if checkID(name) != nil {
			continue
		}
		st, ok, err := loadState(fsys, filepath.Join(t.Dir, name))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) || !ok && err == nil {
			continue
		}
		if errors.Is(err, ErrCorrupt) {
			// One damaged replica must not hide the others; opening it
			// says what is wrong.
			if _, seen := t.damaged.LoadOrStore(name, true); !seen {
				t.logger().Warn("listing replicas: skipping a damaged one", "dir", name, "err", err)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list replicas: %w", err)
		}
		out = append(out, st.Volume)
	}
	return out, nil
}

// Close implements targets.Target; it closes the replicas still open.
func (t *Target) Close() error {
	t.mu.Lock()
	t.closed = true
	open := slices.Collect(maps.Values(t.open))
	t.mu.Unlock()
	return targets.CloseAll(open)
}

func (t *Target) forget(id string, r *Replica) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open[id] == r {
		delete(t.open, id)
	}
}

// lockDir takes an exclusive flock on DIR/lock so that two process servers
// (or two Opens in one process: flock locks are per open file) never apply
// to one replica. The lock dies with the process. In-memory test file
// systems are not locked across Targets.
func lockDir(fsys hrl.FS, dir string) (func(), error) {
	if _, ok := fsys.(hrl.OSFS); !ok {
		return func() {}, nil
	}
	release, err := dirlock.Lock(filepath.Join(dir, lockName))
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("%s is %v; stop that process server first: %w", dir, err, targets.ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("replica lock: %w", err)
	}
	return release, nil
}

// makePrivate tightens a replica directory an earlier version created
// readable by others; a failure is logged, as the replica works as before.
func (t *Target) makePrivate(dir, id string) {
	changed, err := hrl.MakePrivate(t.FS, dir)
	if err != nil {
		t.logger().Warn("replica directory may stay readable by other users", "volume", id, "dir", dir, "err", err)
	}
	if len(changed) > 0 {
		t.logger().Info("replica made private: an earlier version had left it readable by other users",
			"volume", id, "dir", dir, "tightened", len(changed), "modes", "directories 0700, files 0600")
	}
}
