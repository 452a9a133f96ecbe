package nbd

// The exports table. Handshakes read it on every option that names an
// export; AddExport and RemoveExport replace it. It is an immutable
// snapshot behind an atomic pointer, so a reader takes no lock; writers
// are serialised by Server.emu and copy it.
//
// Lock order: Server.emu, then export.mu. Server.mu (connections) is never
// held together with either.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// export is one export being served, with the connections that have it
// open (in transmission, or past a successful NBD_OPT_GO or
// NBD_OPT_EXPORT_NAME).
type export struct {
	Export
	extents Extenter // nil: everything is data

	mu      sync.Mutex
	conns   map[*conn]struct{}
	removed atomic.Bool    // set under mu; no connection attaches after it
	open    sync.WaitGroup // one per attached connection
}

// exportTable is one immutable version of the exports.
type exportTable struct {
	byName map[string]*export
	list   []*export // in the order added, for NBD_OPT_LIST
}

// newExport validates e for a table that already has the exports in t.
func newExport(t *exportTable, e Export) (*export, error) {
	switch {
	case e.Backend == nil:
		return nil, fmt.Errorf("nbd: export %q has no backend", e.Name)
	case len(e.Name) > maxNameLen || len(e.Description) > maxNameLen:
		return nil, fmt.Errorf("nbd: export %q: name and description must be at most %d bytes", e.Name, maxNameLen)
	case e.Backend.Size() < 0:
		return nil, fmt.Errorf("nbd: export %q: negative size %d", e.Name, e.Backend.Size())
	}
	if _, dup := t.byName[e.Name]; dup {
		return nil, fmt.Errorf("%w: %q; export names must be unique (remove it first to replace it)", ErrExportExists, e.Name)
	}
	x := &export{Export: e}
	x.extents, _ = e.Backend.(Extenter)
	return x, nil
}

// with returns a copy of t with x added.
func (t *exportTable) with(x *export) *exportTable {
	n := &exportTable{byName: make(map[string]*export, len(t.byName)+1), list: make([]*export, 0, len(t.list)+1)}
	for k, v := range t.byName {
		n.byName[k] = v
	}
	n.byName[x.Name] = x
	n.list = append(append(n.list, t.list...), x)
	return n
}

// without returns a copy of t without x.
func (t *exportTable) without(x *export) *exportTable {
	n := &exportTable{byName: make(map[string]*export, len(t.byName)), list: make([]*export, 0, len(t.list))}
	for k, v := range t.byName {
		if v != x {
			n.byName[k] = v
		}
	}
	for _, v := range t.list {
		if v != x {
			n.list = append(n.list, v)
		}
	}
	return n
}

// buildExports validates the settings and makes the first table from
// Exports. It runs once, at the first Serve, AddExport, RemoveExport or
// ExportNames.
func (s *Server) buildExports() error {
	if s.MaxInFlight <= 0 {
		s.MaxInFlight = DefaultMaxInFlight
	}
	if s.MaxInFlightBytes <= 0 {
		s.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if s.MaxConnections <= 0 {
		s.MaxConnections = DefaultMaxConnections
	}
	if s.HandshakeTimeout == 0 {
		s.HandshakeTimeout = DefaultHandshakeTimeout
	}
	t := &exportTable{byName: map[string]*export{}}
	for _, e := range s.Exports {
		x, err := newExport(t, e)
		if err != nil {
			return err
		}
		t = t.with(x)
	}
	switch {
	case s.DefaultExport != "":
		// A dynamic server's default may be added later.
		if t.byName[s.DefaultExport] == nil && !s.Dynamic {
			return fmt.Errorf("nbd: default export %q is not among the exports", s.DefaultExport)
		}
	case len(t.list) == 1 && !s.Dynamic:
		s.implicit = t.list[0]
	}
	s.table.Store(t)
	return nil
}

// exports is the current table; init must have succeeded.
func (s *Server) exports() *exportTable { return s.table.Load() }

// lookup resolves a client's export name; "" is the default export.
func (s *Server) lookup(name string) *export {
	t := s.exports()
	if e, ok := t.byName[name]; ok {
		return e
	}
	if name != "" {
		return nil
	}
	if s.DefaultExport != "" {
		return t.byName[s.DefaultExport]
	}
	if e := s.implicit; e != nil && t.byName[e.Name] == e {
		return e // the only export configured, while it is served
	}
	return nil
}

// attach records that c opens e; it fails once e is being removed.
func (e *export) attach(c *conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.removed.Load() {
		return false
	}
	if e.conns == nil {
		e.conns = map[*conn]struct{}{}
	}
	e.conns[c] = struct{}{}
	e.open.Add(1)
	return true
}

// detach undoes attach, after c has stopped calling the backend.
func (e *export) detach(c *conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.conns[c]; ok {
		delete(e.conns, c)
		e.open.Done()
	}
}

// AddExport starts serving e. It is checked as the Exports are at Serve (a
// backend, names and description of at most 4096 bytes, a non-negative
// size) and its name must not be served already (ErrExportExists). It is
// safe while serving: clients connecting after it returns see e in
// NBD_OPT_LIST and can open it. It may be called before Serve too; the
// exported fields must be set by then.
func (s *Server) AddExport(e Export) error {
	if err := s.init(); err != nil {
		return err
	}
	s.emu.Lock()
	defer s.emu.Unlock()
	t := s.exports()
	x, err := newExport(t, e)
	if err != nil {
		return err
	}
	s.table.Store(t.with(x))
	s.logger().Info("nbd: export added", "export", e.Name, "size", e.Backend.Size(), "read_only", e.ReadOnly)
	return nil
}

// RemoveExport stops serving the export name. New clients can no longer
// open it (they get "no export named ..."); connections that have it open
// stop reading requests, answer every request they have received, and
// are closed. It returns when all of them are closed: after that, the
// export's Backend is not called again and may be closed.
//
// If ctx ends first, the connections left are closed without waiting for
// their requests and the error wraps ctx.Err(); backend calls in flight
// may then still be running. An unknown name is an error wrapping
// ErrNoSuchExport.
func (s *Server) RemoveExport(ctx context.Context, name string) error {
	if err := s.init(); err != nil {
		return err
	}
	s.emu.Lock()
	t := s.exports()
	x := t.byName[name]
	if x == nil {
		s.emu.Unlock()
		return fmt.Errorf("nbd: remove export %q: %w", name, ErrNoSuchExport)
	}
	s.table.Store(t.without(x))
	s.emu.Unlock()

	x.mu.Lock()
	x.removed.Store(true)
	conns := make([]*conn, 0, len(x.conns))
	for c := range x.conns {
		conns = append(conns, c)
	}
	x.mu.Unlock()
	for _, c := range conns {
		c.drain()
	}
	done := make(chan struct{})
	go func() {
		x.open.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.logger().Info("nbd: export removed", "export", name, "connections_drained", len(conns))
		return nil
	case <-ctx.Done():
		x.mu.Lock()
		left := len(x.conns)
		for c := range x.conns {
			c.nc.Close()
		}
		x.mu.Unlock()
		s.logger().Warn("nbd: export removed; connections closed before they drained",
			"export", name, "connections", len(conns), "closed_undrained", left, "err", ctx.Err())
		return fmt.Errorf("nbd: remove export %q: %d of %d connections closed before their requests were answered: %w",
			name, left, len(conns), ctx.Err())
	}
}

// ExportNames returns the names of the exports served now, in the order
// NBD_OPT_LIST shows them (Exports first, then as added). It is nil when
// the configuration is invalid (Serve reports why).
func (s *Server) ExportNames() []string {
	if s.init() != nil {
		return nil
	}
	t := s.exports()
	names := make([]string, 0, len(t.list))
	for _, e := range t.list {
		names = append(names, e.Name)
	}
	return names
}
