package failback

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"lifeboat/hrl"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/tracker"
)

// Primary is a volume of the primary machine, as its agent protects it.
type Primary struct {
	Name       string // the agent's name for it
	Path       string // the disk or file
	JournalDir string // the agent's journal directory of it
}

// MasterTarget is the primary site's end of reverse replication: a
// process server (the same receive, verify, spool and apply code as the
// recovery site's) whose target is the primary machine's own disks
// (DiskTarget), plus the API a reprotect and a failback need (api.go).
// While it runs it holds each volume's journal lock, so the agent cannot
// write the disk meanwhile. Set the fields, Open, Serve, Close.
type MasterTarget struct {
	DataDir string // spool, disk states and pki/ (ca.crt, server.crt, server.key)
	Volumes []Primary
	Site    string      // the certificate name allowed to write; default SiteName
	TLS     *tls.Config // nil: pki.ServerTLS(DataDir)
	// Configure sets the process server's limits before it opens.
	Configure func(*pipeline.Server)
	Logger    *slog.Logger

	Server *pipeline.Server // after Open

	disks *DiskTarget

	mu   sync.Mutex
	vols map[string]*primary // by id
}

type primary struct {
	Primary
	info      targets.VolumeInfo
	unshipped Unshipped
	release   func()
	adopted   *AdoptRequest
}

func (m *MasterTarget) logger() *slog.Logger {
	if m.Logger == nil {
		return slog.Default()
	}
	return m.Logger
}

func (m *MasterTarget) site() string {
	if m.Site == "" {
		return SiteName
	}
	return m.Site
}

// Open reads each primary volume's journal directory (recovering it as
// the agent would), takes its lock, and opens the process server over the
// disks.
func (m *MasterTarget) Open(ctx context.Context) (err error) {
	if len(m.Volumes) == 0 {
		return errors.New("master target: no volume given")
	}
	m.vols = map[string]*primary{}
	defer func() {
		if err != nil {
			m.release()
		}
	}()
	var disks []Disk
	for _, pv := range m.Volumes {
		p, err := m.inspect(ctx, pv)
		if err != nil {
			return err
		}
		if old := m.vols[p.info.ID]; old != nil {
			p.release()
			return fmt.Errorf("master target: %s and %s have the same volume id %s (one journal directory given twice?)", old.Name, pv.Name, p.info.ID)
		}
		m.vols[p.info.ID] = p
		if p.adopted, err = loadAdopted(m.DataDir, p.info.ID); err != nil {
			return err
		}
		disks = append(disks, Disk{Info: p.info, Path: pv.Path})
		m.logger().Info("primary volume ready for reverse replication", "volume", pv.Name, "id", p.info.ID,
			"size", p.info.Size, "unshipped_bytes", p.unshipped.Bytes, "dirty_bytes", p.unshipped.DirtyBytes, "writer", m.site())
	}
	dt, err := NewDiskTarget(filepath.Join(m.DataDir, "disks"), disks)
	if err != nil {
		return err
	}
	m.disks = dt
	for id, p := range m.vols {
		if p.adopted != nil {
			dt.Retire(id, "a failback handed it back to its agent")
		}
	}
	conf := m.TLS
	if conf == nil {
		if conf, err = pki.ServerTLS(m.DataDir); err != nil {
			dt.Close()
			return err
		}
	}
	m.Server = pipeline.NewServer(m.DataDir, dt, conf)
	m.Server.Logger = m.logger()
	if m.Configure != nil {
		m.Configure(m.Server)
	}
	m.Server.Handle("GET /v1/master/volumes/{id}", m.handler(false, m.getVolume))
	m.Server.Handle("POST /v1/master/volumes/{id}/hashes", m.handler(true, m.hashes))
	m.Server.Handle("POST /v1/master/volumes/{id}/adopt", m.handler(true, m.adopt))
	return m.Server.Open(ctx)
}

// inspect opens the agent's volume as the agent would (crash recovery
// included), notes its identity and what it never shipped, closes it and
// takes its journal lock.
func (m *MasterTarget) inspect(ctx context.Context, pv Primary) (*primary, error) {
	v := tracker.NewVolume(pv.Path, pv.JournalDir)
	v.Logger = m.logger().With("primary_volume", pv.Name)
	if _, err := os.Stat(filepath.Join(pv.JournalDir, "volume.json")); err != nil {
		return nil, fmt.Errorf("primary volume %s: %s is not the journal directory of an agent's volume (%v)", pv.Name, pv.JournalDir, err)
	}
	if err := v.Open(ctx); err != nil {
		return nil, fmt.Errorf("primary volume %s: %w", pv.Name, err)
	}
	p := &primary{Primary: pv}
	st := v.Status()
	p.info = targets.VolumeInfo{ID: v.VolumeID(), Name: pv.Name, Machine: m.site(), Size: v.Size(), BlockSize: v.BlockSize}
	u, err := unshipped(v)
	p.unshipped = u
	p.unshipped.Unclean = st.Resync
	if cerr := v.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("primary volume %s: %w", pv.Name, err)
	}
	if p.release, err = tracker.LockJournal(pv.JournalDir); err != nil {
		return nil, fmt.Errorf("primary volume %s: %w", pv.Name, err)
	}
	return p, nil
}

// unshipped counts the records of v's unacknowledged segments and lists
// its dirty regions.
func unshipped(v *tracker.Volume) (Unshipped, error) {
	u := Unshipped{Dirty: []targets.Range{}}
	err := v.Bitmap().DirtyRanges(func(off, n int64) error {
		u.Dirty = append(u.Dirty, targets.Range{Off: off, Len: n})
		u.DirtyBytes += n
		return nil
	})
	if err != nil {
		return u, err
	}
	for _, s := range v.Segments() {
		f, err := v.OpenSegment(s)
		if err != nil {
			return u, err
		}
		rd, err := hrl.NewReader(f, s.Size, s.Path)
		for err == nil {
			var rec *hrl.Record
			if rec, err = rd.Next(); err != nil {
				break
			}
			switch rec.Type {
			case hrl.TypeWrite, hrl.TypeZero, hrl.TypeRef, hrl.TypeResync:
				u.Bytes += int64(rec.Length)
				u.Records++
				if u.FirstSeq == 0 {
					u.FirstSeq = rec.Seq
				}
				u.LastSeq = rec.Seq
			}
		}
		f.Close()
		if !errors.Is(err, io.EOF) {
			return u, fmt.Errorf("read unshipped segment %s: %w", s.Path, err)
		}
	}
	return u, nil
}

// Serve serves the API on ln until ctx ends.
func (m *MasterTarget) Serve(ctx context.Context, ln net.Listener) error {
	return m.Server.Serve(ctx, ln)
}

// Close closes the process server and releases the journal locks.
func (m *MasterTarget) Close() error {
	var errs []error
	if m.Server != nil {
		errs = append(errs, m.Server.Close())
	}
	if m.disks != nil {
		errs = append(errs, m.disks.Close())
	}
	m.release()
	return errors.Join(errs...)
}

func (m *MasterTarget) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.vols {
		if p.release != nil {
			p.release()
			p.release = nil
		}
	}
}

// handler checks the caller (the site; an admin may only read), finds the
// volume, decodes the body into a *T when withBody, and answers fn's
// result as JSON (or fn wrote the answer itself and returns nil).
func (m *MasterTarget) handler(write bool, fn func(w http.ResponseWriter, r *http.Request, p *primary) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := m.allowed(r, write); err != nil {
			m.logger().Warn("master target request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
			httpError(w, http.StatusForbidden, err)
			return
		}
		m.mu.Lock()
		p := m.vols[r.PathValue("id")]
		m.mu.Unlock()
		if p == nil {
			httpError(w, http.StatusNotFound, fmt.Errorf("%w: volume id %s is not a primary volume of this master target, which has %s; "+
				"reverse replication must go to the primary volume the failover came from", targets.ErrNotFound, r.PathValue("id"), m.list()))
			return
		}
		out, err := fn(w, r, p)
		switch {
		case errors.Is(err, pipeline.ErrRecoveryState):
			httpError(w, http.StatusConflict, err)
		case errors.Is(err, pipeline.ErrPermanent):
			httpError(w, http.StatusBadRequest, err)
		case err != nil:
			httpError(w, http.StatusInternalServerError, err)
		case out != nil:
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(out)
		}
	})
}

func (m *MasterTarget) allowed(r *http.Request, write bool) error {
	if r.TLS == nil {
		return errors.New("no client certificate")
	}
	name, role, err := pki.Peer(*r.TLS)
	if err != nil {
		return err
	}
	if role == pki.RoleAdmin && !write || role == pki.RoleAgent && name == m.site() {
		return nil
	}
	return fmt.Errorf("%w: only the recovery site (certificate %s) may do this; this certificate is %s (%s)", pipeline.ErrForbidden, m.site(), name, role)
}

// list names the configured volumes, for errors.
func (m *MasterTarget) list() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := ""
	for _, p := range m.vols {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s (id %s, %d bytes)", p.Name, p.info.ID, p.info.Size)
	}
	return s
}

func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}
