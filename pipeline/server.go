package pipeline

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

// Server is the process server: it receives segments, spools them durably
// and applies them to the target. Set the exported fields after NewServer
// and before Open.
type Server struct {
	DataDir string         // the spool lives in DataDir/spool
	Target  targets.Target // where replicas live
	TLS     *tls.Config    // server certificate and client CA; TLS 1.3 is enforced
	FS      hrl.FS         // the spool's file system, default hrl.OSFS
	// SpoolQuota is the most the spool may hold; when less than
	// ThrottleFree of it is free, new segments get 503 "slow down".
	SpoolQuota   int64
	ThrottleFree float64
	Retention    targets.Retention
	// RetentionFor, if set, gives a volume's own retention (its policy's);
	// ok false keeps Retention.
	RetentionFor func(machine, volume string) (r targets.Retention, ok bool)
	Logger       *slog.Logger
	Now          func() time.Time // clock for retention; default time.Now
	// Middleware, if set, wraps the HTTP handler Serve uses: the seam for
	// wrappers around the whole API (the faultinject build of lifeboat
	// installs internal/faultinject.CorruptSegments here).
	Middleware func(http.Handler) http.Handler
	// Holds, when set, is the site's recovery service (package failover):
	// the points it pins are never pruned, and a volume it has failed
	// over gets no more segments.
	Holds Holds

	// MinFree is the free space every file system the server writes (the
	// spool's, a local target's) keeps: a segment that would leave less
	// gets 503 "site disk full" (see diskfree.go). DiskSpace measures a
	// directory's file system; StatDisk when nil.
	MinFree   int64
	DiskSpace func(dir string) (DiskSpace, error)

	// StallTimeout aborts an upload that sends nothing for that long and
	// releases its volume; IdleTimeout closes idle keep-alive connections.
	// ReceiveMemory bounds the buffers of the uploads being received;
	// up to half as much again holds verified segments until they are
	// applied (keep.go).
	StallTimeout  time.Duration
	IdleTimeout   time.Duration
	ReceiveMemory int64

	spool     spool
	openMu    sync.Mutex // serialises opening volumes; guards closing
	closing   bool
	mu        sync.Mutex
	vols      map[string]*volume
	failed    map[string]failedVolume // by id: replicas that could not be opened
	spoolUsed atomic.Int64
	decoders  sync.Pool
	bufs      bufPool
	recvMem   memBudget
	keptMem   memBudget // receive buffers kept for the applier (keep.go)
	throttle  throttleState
	errs      errorCounts // refusals and failures by kind (metrics.go)
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	http      *http.Server
	routes    []route // added by Handle
}

// NewServer returns a Server with default settings.
func NewServer(dataDir string, target targets.Target, tlsConf *tls.Config) *Server {
	return &Server{DataDir: dataDir, Target: target, TLS: tlsConf, FS: hrl.OSFS{}, SpoolQuota: DefaultSpoolQuota,
		ThrottleFree: DefaultThrottleFree, MinFree: DefaultMinFree, StallTimeout: DefaultStallTimeout,
		IdleTimeout: DefaultIdleTimeout, ReceiveMemory: DefaultReceiveMemory,
		Retention: targets.Retention{Window: targets.DefaultRetentionWindow}}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

func (s *Server) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

// Open loads the spool, opens the replica of every spooled volume and
// starts applying what is waiting. A volume whose replica cannot be opened
// is logged and shown as failed with its reason (Status); the others are
// served, and the failed one is tried again when its agent sends or asks.
func (s *Server) Open(ctx context.Context) error {
	if s.Target == nil {
		return errors.New("process server: no target")
	}
	if s.TLS == nil {
		return errors.New("process server: no TLS configuration (there is no plaintext port)")
	}
	if s.SpoolQuota <= 0 || s.ThrottleFree < 0 || s.ThrottleFree >= 1 {
		return fmt.Errorf("process server: spool quota %d and throttle threshold %.2f: want a positive quota and a threshold in [0,1)", s.SpoolQuota, s.ThrottleFree)
	}
	if s.MinFree < 0 || s.StallTimeout < 0 || s.IdleTimeout < 0 || s.ReceiveMemory < 0 {
		return fmt.Errorf("process server: min free %d, stall timeout %v, idle timeout %v, receive memory %d: none may be negative",
			s.MinFree, s.StallTimeout, s.IdleTimeout, s.ReceiveMemory)
	}
	if err := s.Retention.Validate(); err != nil {
		return err
	}
	s.spool = spool{fs: s.FS, dir: filepath.Join(s.DataDir, "spool")}
	s.vols = map[string]*volume{}
	s.failed = map[string]failedVolume{}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	ids, err := s.spool.volumes()
	if err != nil {
		return err
	}
	for _, id := range ids {
		info, err := s.spool.loadInfo(id)
		if err == nil {
			_, err = s.openVolume(ctx, info)
		}
		if err != nil {
			s.markFailed(targets.VolumeInfo{ID: id, Name: info.Name, Machine: info.Machine, Size: info.Size, BlockSize: info.BlockSize}, err)
		}
	}
	return nil
}

// failedVolume is a volume whose replica could not be opened.
type failedVolume struct {
	info targets.VolumeInfo
	err  error
}

// markFailed records, and logs, that a volume's replica cannot be opened.
func (s *Server) markFailed(info targets.VolumeInfo, err error) {
	s.logger().Error("volume cannot be opened; it is shown as failed, the other volumes go on, and it is tried again when its agent sends",
		"volume", info.Name, "id", info.ID, "machine", info.Machine, "err", err)
	s.mu.Lock()
	s.failed[info.ID] = failedVolume{info: info, err: err}
	s.mu.Unlock()
}

// openVolume opens a volume's replica (creating it on the target when the
// site has never seen it), records the replica's info in the spool once
// the target has accepted it, loads the spooled segments and starts the
// applier. A volume that is open already is returned as it is.
func (s *Server) openVolume(ctx context.Context, info targets.VolumeInfo) (*volume, error) {
	// One volume opens at a time, and none after Close began: two first
	// uploads for a volume must not both open its replica, and a request
	// still running during Close must not leave a replica open behind it.
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if s.closing {
		return nil, errors.New("the process server is shutting down")
	}
	if v := s.volume(info.ID); v != nil {
		return v, nil
	}
	rep, err := s.Target.Open(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("open replica of %s (%s): %w", info.Name, info.ID, err)
	}
	v, err := s.loadVolume(ctx, rep)
	if err != nil {
		rep.Close()
		return nil, err
	}
	// Logged before the applier starts: it owns v.pending from then on.
	s.logger().Info("replica opened", "volume", v.info.Name, "id", v.info.ID, "machine", v.info.Machine,
		"applied_seq", v.applied.Seq, "spooled_segments", len(v.pending))
	s.mu.Lock()
	s.vols[v.info.ID] = v
	delete(s.failed, v.info.ID)
	s.mu.Unlock()
	s.wg.Add(1)
	go v.applier(s.ctx)
	v.kick()
	return v, nil
}

// loadVolume records an open replica's info in the spool and loads its
// spooled segments.
func (s *Server) loadVolume(ctx context.Context, rep targets.Replica) (*volume, error) {
	info := rep.Info() // the replica's own record: its machine, its geometry
	st, err := rep.State(ctx)
	if err != nil {
		return nil, fmt.Errorf("state of replica %s: %w", info.Name, err)
	}
	if saved, err := s.spool.loadInfo(info.ID); err != nil || saved != info {
		if err := s.spool.saveInfo(info); err != nil {
			return nil, err
		}
	}
	segs, err := s.spool.list(info.ID)
	if err != nil {
		return nil, err
	}
	points, err := rep.Points(ctx)
	if err != nil {
		return nil, fmt.Errorf("points of replica %s: %w", info.Name, err)
	}
	v := &volume{info: info, rep: newSwappable(rep), srv: s, wake: make(chan struct{}, 1), applied: st,
		hasPoint: len(points) > 0}
	v.recvCond.L = &v.recvMu
	v.spooledGen, v.spooledSeq = st.Generation, st.Seq
	for _, seg := range segs {
		if seg.last <= st.Seq {
			s.spool.remove(seg) // applied before a crash
			continue
		}
		v.pending = append(v.pending, seg)
		s.spoolUsed.Add(seg.size)
		v.spooledGen, v.spooledSeq = seg.generation, seg.last
	}
	return v, nil
}

func (s *Server) volume(id string) *volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vols[id]
}

// Handler is the HTTP API (see the package comment).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes", s.handleVolumes)
	mux.HandleFunc("GET /v1/volumes/{id}", s.handleVolume)
	mux.HandleFunc("POST /v1/volumes/{id}/segments", s.handleSegment)
	mux.HandleFunc("GET /v1/volumes/{id}/points", s.handlePoints)
	mux.HandleFunc("GET /v1/volumes/{id}/points/{seq}", s.handlePointImage)
	mux.HandleFunc("POST /v1/volumes/{id}/machine", s.handleMachine)
	for _, rt := range s.routes {
		mux.Handle(rt.pattern, rt.h)
	}
	return mux
}

// Serve serves the API with TLS on ln until ctx is cancelled or Close.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	conf := s.TLS.Clone()
	conf.MinVersion = tls.VersionTLS13
	if conf.ClientAuth != tls.RequireAndVerifyClientCert {
		return errors.New("process server: the TLS configuration must require client certificates")
	}
	h := s.Handler()
	if s.Middleware != nil {
		h = s.Middleware(h)
	}
	if conf.VerifyConnection != nil { // a revoked certificate, on a connection opened before
		h = s.recheckPeer(h, conf.VerifyConnection)
	}
	s.mu.Lock()
	// The error log carries refused TLS handshakes (an agent without a
	// valid certificate): an admin needs to see those.
	// Bodies have no overall timeout (a segment may take long on a slow
	// link); a stalled one is cut by progressBody.
	s.http = &http.Server{Handler: h, TLSConfig: conf, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: cmp.Or(s.IdleTimeout, DefaultIdleTimeout),
		ErrorLog: slog.NewLogLogger(s.logger().Handler(), slog.LevelWarn)}
	hs := s.http
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	err := hs.Serve(tls.NewListener(ln, conf))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the appliers (a segment being applied is finished or left
// for the next Open) and closes the replicas.
func (s *Server) Close() error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	s.openMu.Lock()
	s.closing = true
	s.openMu.Unlock()
	s.mu.Lock()
	if s.http != nil {
		s.http.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, v := range s.vols {
		errs = append(errs, v.rep.Close())
	}
	s.vols = nil
	return errors.Join(errs...)
}

// SpoolUsage is what the spool holds and the most it may hold.
func (s *Server) SpoolUsage() (used, quota int64) { return s.spoolUsed.Load(), s.SpoolQuota }
