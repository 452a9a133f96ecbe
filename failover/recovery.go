package failover

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/fusefs"
	"lifeboat/hrl"
	"lifeboat/nbd"
	"lifeboat/pipeline"
	"lifeboat/targets"
	"lifeboat/tracker"
)

// DefaultJournalQuota bounds the journal of a failover volume. Nothing
// ships it until a reprotect, so past the quota its writes are tracked by
// the dirty bitmap only (bitmap mode), which is all a failback needs.
const DefaultJournalQuota = 1 << 30

// Manager runs the recovery volumes of a site: test failovers and
// failovers of the process server's volumes, served over NBD and as FUSE
// files. It is the process server's Holds: the points it uses are never
// pruned, and a failed-over volume's segments are refused.
//
// Set the fields, then Load (before the process server opens: its
// appliers prune, and must see the pins), Open (after it: serves them);
// Close when done. Requests come through the HTTP API (Register) or the
// methods directly.
//
// Locks: saveMu before mu; a volume's receive lock (SiteVolume.Fence)
// before mu. mu guards the maps and every field of a recorded recovery
// that status reads (state, err); a recovery's view, volume and backend
// are set and cleared by the one request that holds its volume busy.
type Manager struct {
	Dir  string           // state.json and one directory per recovery volume
	Site *pipeline.Server // whose volumes are recovered
	// NBD serves the recovery volumes (its exports are added and removed
	// here); NBDURL is how a client reaches it, for the answers
	// (nbd://HOST:PORT or nbd+unix:///?socket=PATH). Nil: no NBD.
	NBD    *nbd.Server
	NBDURL func(export string) string
	// FUSE shows each recovery volume as a file (for a loop device). Nil:
	// no files.
	FUSE *fusefs.Mount
	// JournalQuota is a failover volume's journal quota; 0 means
	// DefaultJournalQuota.
	JournalQuota int64
	// ReverseTLS is the site's client TLS for reverse replication to a
	// master target (failback.SiteTLS); nil: no reprotect.
	ReverseTLS func() (*tls.Config, error)
	// ReverseTagInterval is how often reverse replication takes a
	// crash-consistent point; default DefaultReverseTagInterval.
	ReverseTagInterval time.Duration
	// ReverseTagIntervalFor, if set, gives a volume's own interval (its
	// failback policy's); ok false keeps ReverseTagInterval.
	ReverseTagIntervalFor func(machine, volume string) (d time.Duration, ok bool)
	// Jobs records each request of the API as a job; nil: none.
	Jobs   JobRecorder
	Logger *slog.Logger
	Now    func() time.Time

	saveMu sync.Mutex // serialises put: the last state.json written holds the newest list
	mu     sync.Mutex
	recs   map[key]*recovery
	busy   map[string]bool   // volume ids with a request in progress
	plans  map[string]string // volume id -> token of the planned failover its agent is asked for
	steps  map[string]string // volume id -> what its request is doing now (Step)
	jobs   map[string]uint64 // volume id -> the job of its request in progress (none: 0)
	closed bool              // Close began: requests are refused
}

type key struct{ id, kind string }

// recovery is one recovery volume.
type recovery struct {
	state   pipeline.RecoveryState
	dir     string
	live    atomic.Pointer[View] // the open view, for status (Written)
	view    *View
	vol     *tracker.Volume         // failover: the view behind the tracker
	reverse atomic.Pointer[reverse] // failover: its reverse replication, while it runs
	backend nbd.Backend             // what NBD and FUSE serve
	err     string                  // why it could not be reopened after a restart
}

func (m *Manager) logger() *slog.Logger {
	if m.Logger == nil {
		return slog.Default()
	}
	return m.Logger
}

func (m *Manager) now() time.Time {
	if m.Now == nil {
		return time.Now()
	}
	return m.Now()
}

// Open reads the recovery volumes of an earlier run and serves them again.
// One that cannot be reopened (its point was deleted by hand, its overlay
// is damaged) is kept with its error, so that cleanup can remove it; it
// does not stop the others.
func (m *Manager) Open(ctx context.Context) error {
	if m.recs == nil {
		if err := m.Load(); err != nil {
			return err
		}
	}
	m.mu.Lock()
	recs := m.all()
	m.mu.Unlock()
	for _, r := range recs {
		if err := m.reopen(ctx, r); err != nil {
			m.setErr(r, err)
			m.logger().Error("recovery volume could not be reopened; clean it up and start it again", "volume", volName(r.state.Volume),
				"kind", r.state.Kind, "point", r.state.Point.Seq, "err", err)
			continue
		}
		m.logger().Info("recovery volume served again", "volume", volName(r.state.Volume), "kind", r.state.Kind,
			"point", r.state.Point.Seq, "export", r.state.Export)
		if r.state.Reprotect != nil && r.vol != nil && m.ReverseTLS != nil {
			if err := m.resumeReverse(ctx, r); err != nil {
				m.logger().Error("reverse replication could not resume", "volume", volName(r.state.Volume), "err", err)
			}
		}
	}
	return nil
}

// Load reads the recovery volumes of an earlier run (state.json) without
// serving them: from then on their points are pinned and a failed-over
// volume's segments refused. Directories of recovery volumes that
// state.json does not list (a crash during a start or a change of point)
// are deleted.
func (m *Manager) Load() error {
	if m.Dir == "" || m.Site == nil {
		return errors.New("recovery volumes need a directory and a process server")
	}
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return fmt.Errorf("recovery volumes: %w", err)
	}
	saved, err := loadState(m.Dir)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.recs = map[key]*recovery{}
	m.busy = map[string]bool{}
	m.plans = map[string]string{}
	m.steps = map[string]string{}
	m.jobs = map[string]uint64{}
	known := map[string]bool{}
	for _, s := range saved {
		m.recs[key{s.State.Volume.ID, s.State.Kind}] = &recovery{state: s.State, dir: s.Dir}
		known[filepath.Base(s.Dir)] = true
	}
	m.mu.Unlock()
	ents, err := os.ReadDir(m.Dir)
	if err != nil {
		return fmt.Errorf("recovery volumes: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() && !known[e.Name()] {
			m.logger().Warn("deleting a recovery volume directory no recovery volume uses (left by an interrupted request)",
				"dir", filepath.Join(m.Dir, e.Name()))
			if err := removeDir(filepath.Join(m.Dir, e.Name())); err != nil {
				m.logger().Warn("could not delete it", "err", err)
			}
		}
	}
	return nil
}

// setErr records why r is not served.
func (m *Manager) setErr(r *recovery, err error) {
	m.mu.Lock()
	r.err = ""
	if err != nil {
		r.err = err.Error()
	}
	m.mu.Unlock()
}

// reopen opens r's point, overlay and (failover) tracker volume from its
// directory, which must hold them, and serves it.
func (m *Manager) reopen(ctx context.Context, r *recovery) error {
	m.mu.Lock()
	m.where(r) // this run's NBD address and mount, not the saved ones
	m.mu.Unlock()
	if _, err := os.Stat(filepath.Join(r.dir, "overlay", mapName)); err != nil {
		return fmt.Errorf("%w: the overlay of this recovery volume is gone (%v): its writes are lost", ErrDamaged, err)
	}
	sv, err := m.Site.Volume(ctx, r.state.Volume.ID)
	if err != nil {
		return err
	}
	if err := m.openView(ctx, sv, r); err != nil {
		return err
	}
	return m.serve(r)
}

// Close stops serving every recovery volume and closes them, keeping
// their overlays and state for the next Open.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	// Requests in progress (the HTTP server does not wait for them) end
	// first; a long one (a disk copy) is given a while.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		m.mu.Lock()
		n := len(m.busy)
		m.mu.Unlock()
		if n == 0 {
			break
		}
	}
	m.mu.Lock()
	recs := m.all()
	m.mu.Unlock()
	var errs []error
	for _, r := range recs {
		errs = append(errs, m.unserve(context.Background(), r, true), r.close())
	}
	return errors.Join(errs...)
}

// all returns the recovery volumes, ordered by volume and kind; m.mu held.
func (m *Manager) all() []*recovery {
	out := make([]*recovery, 0, len(m.recs))
	for _, r := range m.recs {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *recovery) int {
		x, y := a.state.Volume, b.state.Volume
		return cmp.Or(cmp.Compare(x.Machine, y.Machine), cmp.Compare(x.Name, y.Name), cmp.Compare(x.ID, y.ID),
			cmp.Compare(a.state.Kind, b.state.Kind))
	})
	return out
}

// List returns every recovery volume.
func (m *Manager) List() []pipeline.RecoveryState {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []pipeline.RecoveryState{}
	for _, r := range m.all() {
		out = append(out, r.status())
	}
	return out
}

// status is r's state, read under m.mu.
func (m *Manager) status(r *recovery) pipeline.RecoveryState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return r.status()
}

// status is r's state with its current written bytes; m.mu held.
func (r *recovery) status() pipeline.RecoveryState {
	st := r.state
	if v := r.live.Load(); v != nil {
		st.Written = v.Written()
	}
	st.Error = r.err
	if rv := r.reverse.Load(); rv != nil && st.Reprotect != nil {
		rp := *st.Reprotect
		ss := rv.sh.Status()
		rp.Shipper = &ss
		st.Reprotect = &rp
	}
	return st
}

// Pinned implements pipeline.Holds.
func (m *Manager) Pinned(id string) []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []uint64
	for k, r := range m.recs {
		if k.id == id {
			out = append(out, r.state.Point.Seq)
		}
	}
	return out
}

// FailedOver implements pipeline.Holds.
func (m *Manager) FailedOver(id string) *pipeline.RecoveryState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.recs[key{id, pipeline.RecoveryFailover}]; r != nil {
		st := r.status()
		return &st
	}
	return nil
}

// Recovery implements pipeline.Holds.
func (m *Manager) Recovery(id string) []pipeline.RecoveryState {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []pipeline.RecoveryState
	for _, r := range m.all() {
		if r.state.Volume.ID == id {
			out = append(out, r.status())
		}
	}
	return out
}

// begin marks volume id busy for one request, whose steps go to the job
// ctx carries (if any); end undoes it.
func (m *Manager) begin(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("%w: the server is stopping; retry when it is back", pipeline.ErrRecoveryState)
	}
	if m.busy[id] {
		return fmt.Errorf("%w: another recovery request for this volume is in progress; retry when it is done", pipeline.ErrRecoveryState)
	}
	m.busy[id] = true
	if job := jobOf(ctx); job != 0 {
		m.jobs[id] = job
	}
	return nil
}

func (m *Manager) end(id string) {
	m.mu.Lock()
	delete(m.busy, id)
	delete(m.steps, id)
	delete(m.jobs, id)
	m.mu.Unlock()
}

// Step implements pipeline.Holds.
func (m *Manager) Step(id string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.steps[id]
}

// step records what volume id's request is doing now (Step), logs it and
// passes it to the request's job.
func (m *Manager) step(info targets.VolumeInfo, format string, a ...any) {
	m.stepPct(info, -1, format, a...)
}

// stepPct is step with how much of it is done, 0-100 (negative: unknown).
func (m *Manager) stepPct(info targets.VolumeInfo, pct float64, format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	m.mu.Lock()
	same := m.steps[info.ID] == s
	m.steps[info.ID] = s
	job := m.jobs[info.ID]
	m.mu.Unlock()
	if same {
		return
	}
	m.logger().Info(s, "volume", volName(info))
	if job != 0 && m.Jobs != nil {
		m.Jobs.JobProgress(job, s, pct)
	}
}

// mib formats a byte count for a step.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func (m *Manager) get(id, kind string) *recovery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recs[key{id, kind}]
}

// put records r (nil: forgets it) and saves the state durably. Puts of
// different volumes run one at a time, so the last state.json written is
// the newest list.
func (m *Manager) put(id, kind string, r *recovery) error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	if r == nil {
		delete(m.recs, key{id, kind})
	} else {
		m.recs[key{id, kind}] = r
	}
	saved := make([]savedRecovery, 0, len(m.recs))
	for _, r := range m.all() {
		saved = append(saved, savedRecovery{State: r.state, Dir: r.dir})
	}
	m.mu.Unlock()
	return saveState(m.Dir, saved)
}

// openView opens r's point of sv and the overlay over it; for a failover,
// the tracker volume over the view.
func (m *Manager) openView(ctx context.Context, sv pipeline.SiteVolume, r *recovery) error {
	base, err := sv.Replica().OpenPoint(ctx, r.state.Point.Seq)
	if err != nil {
		return fmt.Errorf("open recovery point %d of %s: %w", r.state.Point.Seq, volName(r.state.Volume), err)
	}
	view, err := OpenView(base, filepath.Join(r.dir, "overlay"))
	if err != nil {
		base.Close()
		return err
	}
	r.view, r.backend = view, view
	r.live.Store(view)
	if r.state.Kind != pipeline.RecoveryFailover {
		return nil
	}
	path := filepath.Join(r.dir, "volume")
	v := tracker.NewVolume(path, filepath.Join(r.dir, "journal"))
	v.FS = ViewFS{FS: hrl.OSFS{}, Path: path, View: view}
	v.ID = r.state.Volume.ID // its journal ships back under the primary volume's id
	v.CleanStart = true      // it equals the point: only what changes from now on is dirty
	v.JournalQuota = m.JournalQuota
	if v.JournalQuota == 0 {
		v.JournalQuota = DefaultJournalQuota
	}
	v.Logger = m.logger().With("failover_volume", volName(r.state.Volume))
	if err := v.Open(ctx); err != nil {
		view.Close()
		r.view, r.backend = nil, nil
		r.live.Store(nil)
		return fmt.Errorf("open the failover volume of %s: %w", volName(r.state.Volume), err)
	}
	r.vol, r.backend = v, v
	return nil
}

// close closes r's tracker volume and view (not its exports).
func (r *recovery) close() error {
	var errs []error
	if rv := r.reverse.Swap(nil); rv != nil {
		rv.stop()
	}
	if r.vol != nil {
		errs = append(errs, r.vol.Close()) // closes the view through ViewFS
		r.vol = nil
	} else if r.view != nil {
		errs = append(errs, r.view.Close())
	}
	r.view, r.backend = nil, nil
	r.live.Store(nil)
	return errors.Join(errs...)
}

// serve adds r's NBD export and FUSE file.
func (m *Manager) serve(r *recovery) error {
	if m.NBD != nil {
		if err := m.NBD.AddExport(nbd.Export{Name: r.state.Export, Backend: r.backend,
			Description: fmt.Sprintf("%s of %s at point %d", r.state.Kind, volName(r.state.Volume), r.state.Point.Seq)}); err != nil {
			return fmt.Errorf("serve %s over NBD: %w", r.state.Export, err)
		}
	}
	if m.FUSE != nil {
		if err := m.FUSE.AddFile(fusefs.File{Name: r.state.Export, Backend: r.backend}); err != nil {
			if m.NBD != nil {
				m.NBD.RemoveExport(context.Background(), r.state.Export)
			}
			return fmt.Errorf("show %s in the FUSE mount: %w", r.state.Export, err)
		}
	}
	return nil
}

// unserve removes r's FUSE file (refused while a loop device holds it,
// unless quiet) and NBD export (draining its requests).
func (m *Manager) unserve(ctx context.Context, r *recovery, shutdown bool) error {
	if m.FUSE != nil && !shutdown {
		err := m.FUSE.RemoveFile(r.state.Export)
		if errors.Is(err, fusefs.ErrBusy) {
			return fmt.Errorf("%w: %s/%s is in use: %v", pipeline.ErrRecoveryState, m.FUSE.Dir, r.state.Export, err)
		}
		if err != nil && !errors.Is(err, fusefs.ErrNoSuchFile) {
			return err
		}
	}
	if m.NBD != nil {
		if err := m.NBD.RemoveExport(ctx, r.state.Export); err != nil && !errors.Is(err, nbd.ErrNoSuchExport) {
			return fmt.Errorf("stop serving %s over NBD: %w", r.state.Export, err)
		}
	}
	return nil
}

// where sets how a client reaches r now: its NBD URL and FUSE file (empty
// without NBD or a mount).
func (m *Manager) where(r *recovery) {
	r.state.URL, r.state.File = "", ""
	if m.NBD != nil {
		r.state.URL = m.NBDURL(r.state.Export)
	}
	if m.FUSE != nil {
		r.state.File = filepath.Join(m.FUSE.Dir, r.state.Export)
	}
}

// exportName is the NBD export and FUSE file name of a recovery volume:
// MACHINE.NAME.test or MACHINE.NAME.failover.
func exportName(info targets.VolumeInfo, kind string) string {
	suffix := "test"
	if kind == pipeline.RecoveryFailover {
		suffix = "failover"
	}
	machine := info.Machine
	if machine == "" {
		machine = "unknown"
	}
	return machine + "." + info.Name + "." + suffix
}

func volName(info targets.VolumeInfo) string {
	if info.Machine == "" {
		return info.Name
	}
	return info.Machine + "/" + info.Name
}
