package pipeline

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// Throttling. Before a segment's body is read, the server checks that the
// spool quota and the disks can take it; if not, the agent gets 503 with
// Retry-After, keeps the segment in its journal and retries.
//
// The disks: every file system the server writes, the spool's and, for a
// local target (targets.Local), the replicas', must keep MinFree bytes
// free (counted as an unprivileged writer sees them) after the segment is
// spooled and everything spooled is applied: the segment counts once for
// the spool, and the segment and the spooled, unapplied bytes once more
// for the replicas. A reserve is kept because that estimate is not a
// bound: a REF or ZERO record applied after a recovery point writes
// before-images too, and uploads checked at the same moment do not see
// each other. When the disk fills anyway, the spool's write fails with
// ENOSPC and is answered like the throttle, and the applier waits for room
// and reopens its replica (recover.go).
//
// A throttling episode is logged when it begins and when it ends (the
// first segment accepted again), not per request, and shown in every
// volume's status (VolumeStatus.Throttled) while it lasts.

// DefaultMinFree is the free space the server leaves on every file system
// it writes.
const DefaultMinFree = 1 << 30

// ErrSiteDiskFull is the throttle's answer when a disk of the site is too
// full: the agent shows "site disk full" while it lasts.
var ErrSiteDiskFull = fmt.Errorf("%w: site disk full", ErrSlowDown)

// Values of SegmentReply.Throttled.
const (
	ThrottleDiskFull  = "site_disk_full"
	ThrottleSpoolFull = "spool_full"
)

// DiskSpace is a file system's space as the process server sees it.
type DiskSpace struct {
	Dev  uint64 // identifies the file system (st_dev of the directory)
	Free int64  // bytes an unprivileged writer may still use (f_bavail)
	Size int64
}

// StatDisk is the default Server.DiskSpace: statfs of dir, or of its
// nearest existing parent.
func StatDisk(dir string) (DiskSpace, error) {
	for {
		var fs unix.Statfs_t
		err := unix.Statfs(dir, &fs)
		if errors.Is(err, unix.ENOENT) && filepath.Dir(dir) != dir {
			dir = filepath.Dir(dir)
			continue
		}
		if err != nil {
			return DiskSpace{}, fmt.Errorf("free space of %s: %w", dir, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return DiskSpace{}, fmt.Errorf("free space of %s: %w", dir, err)
		}
		bs := fs.Frsize
		if bs <= 0 {
			bs = fs.Bsize
		}
		return DiskSpace{Dev: st.Dev, Free: int64(fs.Bavail) * bs, Size: int64(fs.Blocks) * bs}, nil
	}
}

// diskSpace measures dir with the configured function: Server.DiskSpace,
// else StatDisk on the real file system; false when there is nothing to
// measure (an in-memory spool in tests).
func (s *Server) diskSpace(dir string) (DiskSpace, bool, error) {
	switch {
	case s.DiskSpace != nil:
		d, err := s.DiskSpace(dir)
		return d, true, err
	case isOSFS(s.FS):
		d, err := StatDisk(dir)
		return d, true, err
	}
	return DiskSpace{}, false, nil
}

func isOSFS(fs hrl.FS) bool {
	_, ok := fs.(hrl.OSFS)
	return ok || fs == nil
}

// localDir is the replicas' directory when the target keeps them on this
// machine's file system, or "".
func (s *Server) localDir() string {
	if l, ok := s.Target.(targets.Local); ok {
		return l.LocalDir()
	}
	return ""
}

// admit decides whether a segment of size bytes may be received now: nil,
// or an error wrapping ErrSlowDown for a 503.
func (s *Server) admit(size int64) error {
	used := s.spoolUsed.Load()
	if free := s.SpoolQuota - used - size; float64(free) < s.ThrottleFree*float64(s.SpoolQuota) {
		return s.throttle.refuse(s, ThrottleSpoolFull, fmt.Errorf("%w: spool nearly full (%d of %d bytes used, --spool-quota)",
			ErrSlowDown, used, s.SpoolQuota))
	}
	if err := s.checkDisks(size, used); err != nil {
		return s.throttle.refuse(s, ThrottleDiskFull, err)
	}
	s.throttle.admitted(s)
	return nil
}

// checkDisks checks the reserve of every file system the segment will be
// written to (see the top of this file).
func (s *Server) checkDisks(size, spooled int64) error {
	type disk struct {
		space DiskSpace
		need  int64
		roles []string
	}
	var disks []*disk
	add := func(role, dir string, need int64) {
		d, ok, err := s.diskSpace(dir)
		if !ok {
			return
		}
		if err != nil {
			// Not knowing is no reason to stop replicating; the spool's
			// own write still fails if the disk is full.
			s.logger().Warn("cannot measure free space; not throttling on it", "dir", dir, "err", err)
			return
		}
		for _, k := range disks {
			if k.space.Dev == d.Dev {
				k.need += need
				k.roles = append(k.roles, role+" "+dir)
				return
			}
		}
		disks = append(disks, &disk{space: d, need: need, roles: []string{role + " " + dir}})
	}
	add("spool", s.spool.dir, size)
	if dir := s.localDir(); dir != "" {
		add("replicas", dir, size+spooled)
	}
	for _, d := range disks {
		if d.space.Free-d.need < s.MinFree {
			return fmt.Errorf("%w: the file system of %s has %s free; this segment and the spooled ones still to apply "+
				"need %s of it, and --min-free keeps %s free: free space there or give the site more storage",
				ErrSiteDiskFull, strings.Join(d.roles, " and "), sizeString(d.space.Free), sizeString(d.need), sizeString(s.MinFree))
		}
	}
	return nil
}

// spoolFailed answers a segment the spool could not write: a full disk
// (or quota) is a throttle episode and a 503 like the check before it,
// anything else a 500.
func (s *Server) spoolFailed(w http.ResponseWriter, log *slog.Logger, err error) {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		s.errs.add(KindSiteDiskFull)
		writeThrottled(w, s.throttle.refuse(s, ThrottleDiskFull, fmt.Errorf("%w: writing the spool %s: %v; free space there",
			ErrSiteDiskFull, s.spool.dir, err)))
		return
	}
	s.errs.add(KindSpool)
	log.Error("spool write failed", "err", err)
	httpError(w, http.StatusInternalServerError, err)
}

// writeThrottled answers a segment refused by admit (or spoolFailed).
func writeThrottled(w http.ResponseWriter, err error) {
	reason := ThrottleSpoolFull
	if errors.Is(err, ErrSiteDiskFull) {
		reason = ThrottleDiskFull
	}
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, SegmentReply{Error: err.Error(), Throttled: reason})
}

// throttleState is the current throttling episode.
type throttleState struct {
	mu      sync.Mutex
	kind    string // ThrottleDiskFull, ThrottleSpoolFull, or "" when none
	reason  string
	since   time.Time
	refused int
}

// refuse records a refusal of the given kind and returns err; the first of
// an episode (or of a new kind) is logged.
func (t *throttleState) refuse(s *Server, kind string, err error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.reason = err.Error()
	t.refused++
	if t.kind != kind {
		if t.kind == "" {
			t.since, t.refused = s.now(), 1
		}
		t.kind = kind
		s.logger().Warn("throttling agents: segments are refused (503) until this changes", "throttle", kind, "reason", t.reason)
	}
	return err
}

// admitted ends an episode.
func (t *throttleState) admitted(s *Server) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kind == "" {
		return
	}
	s.logger().Info("throttling ended: accepting segments again", "throttle", t.kind,
		"lasted", s.now().Sub(t.since).Round(time.Millisecond), "segments_refused", t.refused)
	t.kind, t.reason, t.refused = "", "", 0
}

// current is the episode's reason for a volume's status, "" when none.
func (t *throttleState) current() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kind == "" {
		return ""
	}
	return fmt.Sprintf("%s (since %s)", t.reason, t.since.UTC().Format(time.RFC3339))
}

// sizeString shows a byte count in KiB, MiB or GiB.
func sizeString(n int64) string {
	switch {
	case n < 1<<20:
		return fmt.Sprintf("%d KiB", n>>10)
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}
