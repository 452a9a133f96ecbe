package pipeline

import (
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

	"github.com/klauspost/compress/zstd"

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
	Logger       *slog.Logger
	Now          func() time.Time // clock for retention; default time.Now
	// Middleware, if set, wraps the HTTP handler Serve uses: the seam for
	// wrappers around the whole API (the faultinject build of lifeboat
	// installs internal/faultinject.CorruptSegments here).
	Middleware func(http.Handler) http.Handler

	spool     spool
	openMu    sync.Mutex // serialises opening volumes; guards closing
	closing   bool
	mu        sync.Mutex
	vols      map[string]*volume
	spoolUsed atomic.Int64
	decoders  sync.Pool
	bufs      sync.Pool
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	http      *http.Server
}

// NewServer returns a Server with default settings.
func NewServer(dataDir string, target targets.Target, tlsConf *tls.Config) *Server {
	return &Server{DataDir: dataDir, Target: target, TLS: tlsConf, FS: hrl.OSFS{}, SpoolQuota: DefaultSpoolQuota,
		ThrottleFree: DefaultThrottleFree, Retention: targets.Retention{Window: targets.DefaultRetentionWindow}}
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
// starts applying what is waiting.
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
	if err := s.Retention.Validate(); err != nil {
		return err
	}
	s.spool = spool{fs: s.FS, dir: filepath.Join(s.DataDir, "spool")}
	s.vols = map[string]*volume{}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	ids, err := s.spool.volumes()
	if err != nil {
		return err
	}
	for _, id := range ids {
		info, err := s.spool.loadInfo(id)
		if err != nil {
			return err
		}
		if _, err := s.openVolume(ctx, info); err != nil {
			s.Close()
			return err
		}
	}
	return nil
}

// openVolume opens a replica, loads its spooled segments and starts its
// applier. s.mu must not be held.
func (s *Server) openVolume(ctx context.Context, info targets.VolumeInfo) (*volume, error) {
	rep, err := s.Target.Open(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("open replica of %s (%s): %w", info.Name, info.ID, err)
	}
	st, err := rep.State(ctx)
	if err != nil {
		rep.Close()
		return nil, fmt.Errorf("state of replica %s: %w", info.Name, err)
	}
	segs, err := s.spool.list(info.ID)
	if err != nil {
		rep.Close()
		return nil, err
	}
	v := &volume{info: info, rep: rep, srv: s, wake: make(chan struct{}, 1), applied: st}
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
	// Logged before the applier starts: it owns v.pending from then on.
	s.logger().Info("replica opened", "volume", info.Name, "id", info.ID, "applied_seq", st.Seq,
		"spooled_segments", len(v.pending))
	s.mu.Lock()
	s.vols[info.ID] = v
	s.mu.Unlock()
	s.wg.Add(1)
	go v.applier(s.ctx)
	v.kick()
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
	s.mu.Lock()
	// The error log carries refused TLS handshakes (an agent without a
	// valid certificate): an admin needs to see those.
	s.http = &http.Server{Handler: h, TLSConfig: conf, ReadHeaderTimeout: 30 * time.Second,
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

func (s *Server) decoder() (*zstd.Decoder, error) {
	if d, ok := s.decoders.Get().(*zstd.Decoder); ok {
		return d, nil
	}
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(false),
		zstd.WithDecoderMaxMemory(maxSegmentWireBytes))
}

// getBuf returns a pooled buffer of length n.
func (s *Server) getBuf(n int64) *[]byte {
	if bp, ok := s.bufs.Get().(*[]byte); ok && int64(cap(*bp)) >= n {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, max(n, 33<<20))
	return &b
}
