package failover

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"lifeboat/failback"
	"lifeboat/fusefs"
	"lifeboat/nbd"
	"lifeboat/pipeline"
	"lifeboat/targets"
)

// DefaultNBDAddr is where the site serves recovery volumes over NBD: the
// loopback only, since NBD has no authentication. Serve them elsewhere
// (a recovery network) on purpose, with --recovery-nbd.
const DefaultNBDAddr = "127.0.0.1:10810"

// Site is a recovery site in one process: the process server on its data
// port and the recovery volumes over NBD and FUSE. `lifeboat server` and
// `lifeboat demo` run it. Set the fields, Open, Serve, Close.
type Site struct {
	DataDir string
	Target  targets.Target
	TLS     *tls.Config
	// Recovery turns on the recovery volumes (test failover, failover)
	// and their API; a scale-out process server runs without.
	Recovery bool
	// NBDAddr serves recovery volumes over NBD (host:port or unix:PATH);
	// "" serves none. FUSEDir, when set, shows each as a file there.
	NBDAddr string
	FUSEDir string
	// Jobs records the recovery API's requests as jobs (Manager.Jobs);
	// nil: none.
	Jobs JobRecorder
	// Configure sets the process server's limits before it opens.
	Configure func(*pipeline.Server)
	// ReverseTagIntervalFor is Manager.ReverseTagIntervalFor (a volume's
	// failback policy).
	ReverseTagIntervalFor func(machine, volume string) (time.Duration, bool)
	Logger                *slog.Logger

	Server  *pipeline.Server // after Open
	Manager *Manager         // after Open, with Recovery

	nbdSrv  *nbd.Server
	nbdLn   net.Listener
	nbdDone chan error
	mount   *fusefs.Mount
}

func (s *Site) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// Open opens the process server, the NBD listener, the FUSE mount and the
// recovery volumes of an earlier run.
func (s *Site) Open(ctx context.Context) (err error) {
	log := s.logger()
	s.Server = pipeline.NewServer(s.DataDir, s.Target, s.TLS)
	s.Server.Logger = log
	if s.Configure != nil {
		s.Configure(s.Server)
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if !s.Recovery {
		return s.Server.Open(ctx)
	}
	s.Manager = &Manager{Dir: filepath.Join(s.DataDir, "recovery"), Site: s.Server, Logger: log, Jobs: s.Jobs,
		ReverseTLS:            func() (*tls.Config, error) { return failback.SiteTLS(s.DataDir) },
		ReverseTagIntervalFor: s.ReverseTagIntervalFor}
	if s.NBDAddr != "" {
		ln, err := nbd.Listen(s.NBDAddr, log)
		if err != nil {
			return fmt.Errorf("recovery volumes over NBD: %w", err)
		}
		s.nbdLn = ln
		s.nbdSrv = nbd.NewServer()
		s.nbdSrv.Logger = log
		s.nbdSrv.Dynamic = true
		s.Manager.NBD = s.nbdSrv
		s.Manager.NBDURL = func(export string) string { return nbd.URI(ln.Addr(), export) }
	}
	if s.FUSEDir != "" {
		if err := os.MkdirAll(s.FUSEDir, 0o700); err != nil {
			return fmt.Errorf("recovery volumes' FUSE mount: %w", err)
		}
		s.mount = &fusefs.Mount{Dir: s.FUSEDir, Logger: log, Dynamic: true}
		if err := s.mount.Mount(ctx); err != nil {
			s.mount = nil
			return fmt.Errorf("recovery volumes' FUSE mount %s: %w", s.FUSEDir, err)
		}
		s.Manager.FUSE = s.mount
	}
	s.Manager.Register()
	// Pins and fences first: the process server's appliers prune from
	// the moment it opens.
	if err := s.Manager.Load(); err != nil {
		return err
	}
	if err := s.Server.Open(ctx); err != nil {
		return err
	}
	if s.nbdSrv != nil {
		s.nbdDone = make(chan error, 1)
		go func() { s.nbdDone <- s.nbdSrv.Serve(context.Background(), s.nbdLn) }()
	}
	return s.Manager.Open(ctx)
}

// NBDListenAddr returns the address recovery volumes are served on, nil without
// NBD.
func (s *Site) NBDListenAddr() net.Addr {
	if s.nbdLn == nil {
		return nil
	}
	return s.nbdLn.Addr()
}

// Serve serves the process server's API on ln until ctx ends.
func (s *Site) Serve(ctx context.Context, ln net.Listener) error {
	return s.Server.Serve(ctx, ln)
}

// Close stops serving recovery volumes (draining NBD requests), keeps
// their state for the next Open, and closes the process server.
func (s *Site) Close() error {
	var errs []error
	if s.nbdSrv != nil && s.nbdDone != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.nbdSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop serving recovery volumes over NBD: %w", err))
		}
		cancel()
		if err := <-s.nbdDone; err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			errs = append(errs, err)
		}
		s.nbdDone = nil
	} else if s.nbdLn != nil {
		s.nbdLn.Close()
	}
	if s.mount != nil {
		deadline := time.Now().Add(10 * time.Second)
		err := s.mount.Unmount()
		for errors.Is(err, fusefs.ErrBusy) && time.Now().Before(deadline) {
			s.logger().Warn("FUSE mount busy: detach loop devices over its files (losetup -d) so the server can stop", "dir", s.mount.Dir)
			time.Sleep(time.Second)
			err = s.mount.Unmount()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", s.mount.Dir, err))
		}
		s.mount = nil
	}
	if s.Manager != nil && s.Manager.recs != nil {
		errs = append(errs, s.Manager.Close())
	}
	if s.Server != nil {
		errs = append(errs, s.Server.Close())
	}
	return errors.Join(errs...)
}
