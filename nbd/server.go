// Package nbd is an NBD server (fixed newstyle handshake, structured
// replies, base:allocation block status) in front of a Backend such as
// tracker.Volume. It is the protocol only: every request becomes one
// Backend call.
//
// Per connection, one goroutine reads requests and up to MaxInFlight
// workers run them concurrently; replies go out as requests complete.
// Errors a client can cause are answered with an NBD error and the
// connection stays up; a protocol violation (a bad magic, a write payload
// too large to skip) closes that connection only.
//
// Resources are bounded per connection (MaxInFlightBytes of payloads,
// enforced by back-pressure) and per server (MaxConnections; a connection
// over the cap is refused with an NBD error during option haggling).
//
// Exports can change while the server runs (Server.Dynamic, AddExport,
// RemoveExport): the recovery site serves test-failover and failover
// volumes as they are created and removed. Removing an export drains it as
// Shutdown drains the server: its connections stop reading requests,
// answer the ones received, and are closed; then its backend is no longer
// called. The per-request path takes no lock for this: a connection holds
// its export from the handshake on.
package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults and limits.
const (
	DefaultMaxInFlight      = 32
	DefaultMaxInFlightBytes = 64 << 20 // two MaxPayload requests
	DefaultMaxConnections   = 64
	DefaultHandshakeTimeout = 30 * time.Second

	// A connection over MaxConnections is answered with NBD_REP_ERR_POLICY
	// for at most refuseTimeout; beyond maxRefusing such connections at
	// once, more are closed without a word.
	refuseTimeout = 10 * time.Second
	maxRefusing   = 16

	// MinBlockSize, PreferredBlockSize and MaxPayload are advertised with
	// NBD_INFO_BLOCK_SIZE. READ and WRITE requests longer than MaxPayload
	// get EINVAL; a WRITE payload longer than maxDiscard closes the
	// connection instead of being read and discarded.
	MinBlockSize       = 512
	PreferredBlockSize = 4096
	MaxPayload         = 32 << 20
	maxDiscard         = 64 << 20

	maxNameLen = 4096 // NBD strings: export names, descriptions
)

// Errors of this package.
var (
	ErrServerClosed = errors.New("nbd: server closed")
	ErrNoExports    = errors.New("nbd: no exports configured; add at least one Export, or set Dynamic and add them with AddExport")
	// ErrNoSuchExport is wrapped by RemoveExport for a name not served.
	ErrNoSuchExport = errors.New("no such export; list the exports with ExportNames")
	// ErrExportExists is wrapped by AddExport (and Serve) for a name
	// served already.
	ErrExportExists = errors.New("an export of that name exists already")
)

// Export is one named volume served over NBD: configured in
// Server.Exports, or added while serving with Server.AddExport and removed
// with Server.RemoveExport. Its Backend is called from the first client
// that opens it until RemoveExport returns (or the server's connections
// have ended).
type Export struct {
	Name        string // what clients put in the URI: nbd://host:port/NAME
	Description string // shown by nbdinfo; optional
	Backend     Backend
	ReadOnly    bool // writes, trims and zeroes get EPERM
}

// Server serves Exports, and exports added and removed at run time with
// AddExport and RemoveExport. Set the exported fields after NewServer and
// before the first Serve, AddExport, RemoveExport or ExportNames; later
// changes are not seen.
type Server struct {
	// Exports are served from the start. Serve refuses to start without
	// any (ErrNoExports) unless Dynamic is set.
	Exports []Export
	// Dynamic says exports come at run time: Serve starts even with no
	// Exports, AddExport adds them, and the empty name "" selects only
	// DefaultExport, never "the only export" (which would change with
	// each AddExport and RemoveExport).
	Dynamic bool
	// DefaultExport names the export a client gets when it asks for the
	// empty name "" (nbd://host:port/ without a name), while an export of
	// that name is served. Unless Dynamic is set it must be among Exports.
	// When it is empty and Dynamic is not set, "" selects the only entry of
	// Exports if there is exactly one, for as long as it is served; an
	// export added later never becomes the default.
	DefaultExport string
	Logger        *slog.Logger
	// MaxInFlight bounds the requests of one connection processed at the
	// same time; more wait in the socket. Default DefaultMaxInFlight.
	MaxInFlight int
	// MaxInFlightBytes bounds the payload bytes one connection holds:
	// WRITE payloads read and not yet written to the backend plus READ
	// replies allocated and not yet sent, each counted as its pool buffer
	// (the length rounded up to a power of two). A request that would
	// exceed it waits, unread, until enough complete: the client is slowed
	// through the socket, never answered with an error. One request larger
	// than the budget runs alone. Default DefaultMaxInFlightBytes.
	MaxInFlightBytes int64
	// MaxConnections caps the connections served at once, handshakes
	// included. One more is refused (logged with the peer and the cap):
	// every option gets NBD_REP_ERR_POLICY with a message, then it is
	// closed. Default DefaultMaxConnections.
	MaxConnections int
	// HandshakeTimeout bounds option haggling; negative disables it.
	HandshakeTimeout time.Duration

	initOnce sync.Once
	initErr  error
	emu      sync.Mutex                  // serialises changes of table
	table    atomic.Pointer[exportTable] // exports.go
	implicit *export                     // "" without DefaultExport; see there

	closing   atomic.Bool
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{} // admitted and refused
	admitted  int                // conns being served, for MaxConnections
	refusing  int                // conns being refused
	connWG    sync.WaitGroup

	// Payload bytes held by all connections, the most one connection has
	// held, and the readers waiting for their budget (export_test.go).
	held    atomic.Int64
	peak    atomic.Int64
	waiting atomic.Int32
	// Writes of queued small replies (see send), for tests.
	replyWrites atomic.Int64
}

// NewServer returns a Server with default settings and no exports.
func NewServer() *Server {
	return &Server{MaxInFlight: DefaultMaxInFlight, MaxInFlightBytes: DefaultMaxInFlightBytes,
		MaxConnections: DefaultMaxConnections, HandshakeTimeout: DefaultHandshakeTimeout}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

func (s *Server) init() error {
	s.initOnce.Do(func() { s.initErr = s.buildExports() })
	return s.initErr
}

// Serve accepts connections on ln and serves them until ctx is done, ln
// fails or Shutdown is called; it closes ln. Then it stops its connections
// as Shutdown does: no new requests are read, the ones received are
// answered, and the connections are closed. It returns when all of them
// have ended, with ctx.Err(), the accept error, or ErrServerClosed after
// Shutdown. The drain is not bounded here; bound it with Shutdown and a
// deadline (cancel ctx, then call Shutdown).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.init(); err != nil {
		ln.Close()
		return err
	}
	if !s.Dynamic && len(s.exports().list) == 0 {
		ln.Close()
		return ErrNoExports
	}
	if !s.trackListener(ln, true) {
		ln.Close()
		return ErrServerClosed
	}
	connCtx, stopConns := context.WithCancel(ctx)
	defer stopConns()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	var wg sync.WaitGroup
	err := s.accept(connCtx, ln, &wg)
	stop()
	ln.Close()
	s.trackListener(ln, false)
	switch {
	case s.closing.Load():
		err = ErrServerClosed
	case ctx.Err() != nil:
		err = ctx.Err()
	}
	stopConns() // drain this listener's connections
	wg.Wait()
	return err
}

func (s *Server) accept(ctx context.Context, ln net.Listener, wg *sync.WaitGroup) error {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || s.closing.Load() {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
				errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.logger().Warn("nbd: accept failed, retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		delay = 0
		c := newConn(ctx, s, nc)
		switch s.addConn(c) {
		case connClosing:
			nc.Close()
			continue
		case connDrop:
			c.log.Warn("nbd: connection refused and closed at once: too many connections",
				"max_connections", s.MaxConnections, "being_refused", maxRefusing)
			nc.Close()
			continue
		case connRefuse:
			c.log.Warn("nbd: connection refused: too many connections; answering its options with an error",
				"max_connections", s.MaxConnections)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.removeConn(c)
			stop := context.AfterFunc(ctx, c.interrupt)
			defer stop()
			c.serve()
		}()
	}
}

// trackListener adds or removes a listener; adding fails once Shutdown
// has begun.
func (s *Server) trackListener(ln net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.listeners, ln)
		return true
	}
	if s.closing.Load() {
		return false
	}
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
	}
	s.listeners[ln] = struct{}{}
	return true
}

// What addConn decided for a new connection.
const (
	connServe   = iota // within MaxConnections
	connRefuse         // over it: answer its options with an error
	connDrop           // over it, and too many being refused: close it
	connClosing        // Shutdown has begun: close it
)

// addConn admits, refuses or drops a new connection. Admitted and refused
// connections are tracked until removeConn, so that Shutdown finds them.
func (s *Server) addConn(c *conn) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return connClosing
	}
	verdict := connServe
	switch {
	case s.admitted < s.MaxConnections:
		s.admitted++
	case s.refusing < maxRefusing:
		s.refusing++
		verdict = connRefuse
		c.refused = fmt.Sprintf("the server is at its limit of %d connections; close one and try again", s.MaxConnections)
	default:
		return connDrop
	}
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	s.connWG.Add(1)
	s.conns[c] = struct{}{}
	return verdict
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	if c.refused != "" {
		s.refusing--
	} else {
		s.admitted--
	}
	s.connWG.Done()
}

// Shutdown stops the server gracefully: it stops accepting, stops reading
// new requests, answers every request already received, then closes the
// connections. Connections still in the handshake are closed at once. If
// ctx ends first, the remaining connections are closed without waiting
// and ctx.Err() is returned; their in-flight backend calls may still be
// running.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.interrupt()
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}
