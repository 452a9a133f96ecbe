package nbd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"lifeboat/nbd"
)

// watched wraps a Backend and counts its calls in progress and the calls
// that began after closed was set: after RemoveExport returns, there must
// be none.
type watched struct {
	nbd.Backend
	in, calls, late atomic.Int64
	closed          atomic.Bool
}

func (w *watched) enter() {
	w.in.Add(1)
	w.calls.Add(1)
	if w.closed.Load() {
		w.late.Add(1)
	}
}

func (w *watched) leave() { w.in.Add(-1) }

func (w *watched) ReadAt(p []byte, off int64) (int, error) {
	w.enter()
	defer w.leave()
	return w.Backend.ReadAt(p, off)
}

func (w *watched) WriteAt(p []byte, off int64) (int, error) {
	w.enter()
	defer w.leave()
	return w.Backend.WriteAt(p, off)
}

func (w *watched) WriteZeroes(off, n int64) error {
	w.enter()
	defer w.leave()
	return w.Backend.WriteZeroes(off, n)
}

func (w *watched) Trim(off, n int64) error {
	w.enter()
	defer w.leave()
	return w.Backend.Trim(off, n)
}

func (w *watched) Flush() error {
	w.enter()
	defer w.leave()
	return w.Backend.Flush()
}

// removed marks the backend closed once RemoveExport returned and checks
// that no call is still running; late calls are checked at the end.
func (w *watched) removed(t *testing.T) {
	t.Helper()
	w.closed.Store(true)
	if n := w.in.Load(); n != 0 {
		t.Errorf("%d backend calls still running after RemoveExport returned", n)
	}
	t.Cleanup(func() {
		if n := w.late.Load(); n != 0 {
			t.Errorf("%d backend calls after RemoveExport returned", n)
		}
	})
}

// dynamicServer serves with Dynamic set and no exports.
func dynamicServer(t *testing.T, log *logBuffer) (*nbd.Server, string) {
	t.Helper()
	srv := nbd.NewServer()
	srv.Dynamic = true
	if log != nil {
		srv.Logger = log.logger()
	}
	return srv, serve(t, srv)
}

// goFails opens name with NBD_OPT_GO on a new connection and returns the
// error reply's message; an ACK fails the test.
func goFails(t *testing.T, addr, name string) string {
	t.Helper()
	c := dial(t, addr)
	replies := c.option(optGo, infoData(name))
	last := replies[len(replies)-1]
	if last.typ != repErrUnknown {
		t.Fatalf("NBD_OPT_GO %q: reply %#x %q, want NBD_REP_ERR_UNKNOWN", name, last.typ, last.data)
	}
	return string(last.data)
}

// listExports returns the names NBD_OPT_LIST shows.
func listExports(t *testing.T, addr string) []string {
	t.Helper()
	c := dial(t, addr)
	var names []string
	for _, r := range c.option(optList, nil) {
		if r.typ == repServer {
			n := int(r.data[0])<<24 | int(r.data[1])<<16 | int(r.data[2])<<8 | int(r.data[3])
			names = append(names, string(r.data[4:4+n]))
		}
	}
	return names
}

func TestAddExportWhileServing(t *testing.T) {
	srv, addr := dynamicServer(t, nil)
	if got := listExports(t, addr); len(got) != 0 {
		t.Fatalf("a new dynamic server lists %q", got)
	}
	goFails(t, addr, "a")
	a, b := newMem(1<<20), newMem(2<<20)
	if err := srv.AddExport(nbd.Export{Name: "a", Backend: a}); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddExport(nbd.Export{Name: "b", Backend: b, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if got, want := listExports(t, addr), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("NBD_OPT_LIST: %q, want %q", got, want)
	}
	if got, want := srv.ExportNames(), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("ExportNames: %q, want %q", got, want)
	}
	c := dial(t, addr)
	if size, _ := c.goExport("a"); size != 1<<20 {
		t.Fatalf("size %d", size)
	}
	c.mustOK(cmdWrite, 0, 4096, 512, fill(512, 7))
	if got := c.read(4096, 512); got[0] != 7 {
		t.Fatalf("read back %d, want 7", got[0])
	}
	c = dial(t, addr)
	c.goExport("b")
	expectErr(t, c.do(cmdWrite, 0, 0, 512, fill(512, 1)), ePERM, "write to the read-only export added at run time")
}

func TestAddExportRejects(t *testing.T) {
	m := newMem(4096)
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "a", Backend: m}}
	serve(t, srv)
	for _, c := range []struct {
		name string
		e    nbd.Export
		want string
	}{
		{"duplicate", nbd.Export{Name: "a", Backend: m}, `"a"`},
		{"nil backend", nbd.Export{Name: "b"}, "no backend"},
		{"long name", nbd.Export{Name: strings.Repeat("n", 4097), Backend: m}, "at most 4096"},
		{"long description", nbd.Export{Name: "c", Description: strings.Repeat("d", 4097), Backend: m}, "at most 4096"},
		{"negative size", nbd.Export{Name: "d", Backend: sizeOnly(-1)}, "negative size"},
	} {
		err := srv.AddExport(c.e)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: AddExport = %v, want an error with %q", c.name, err, c.want)
		}
		if c.name == "duplicate" && !errors.Is(err, nbd.ErrExportExists) {
			t.Errorf("duplicate: %v does not wrap ErrExportExists", err)
		}
	}
	if got := srv.ExportNames(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("ExportNames after refused additions: %q", got)
	}
}

// sizeOnly is a Backend that only has a size.
type sizeOnly int64

func (s sizeOnly) ReadAt(p []byte, off int64) (int, error)  { return len(p), nil }
func (s sizeOnly) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (s sizeOnly) WriteZeroes(off, n int64) error           { return nil }
func (s sizeOnly) Trim(off, n int64) error                  { return nil }
func (s sizeOnly) Flush() error                             { return nil }
func (s sizeOnly) Size() int64                              { return int64(s) }

// RemoveExport drains a connection with writes in flight: every write the
// server received is answered before the connection is closed, the
// backend is not called after RemoveExport returns, and new clients get
// "no export named". Another export's connection is not disturbed.
func TestRemoveExportDrains(t *testing.T) {
	const n = 8 // at most MaxInFlight: all of them reach the backend
	log := &logBuffer{}
	srv, addr := dynamicServer(t, log)
	m := newMem(1 << 20)
	g := gateWrites(m)
	t.Cleanup(g.open)
	w := &watched{Backend: m}
	if err := srv.AddExport(nbd.Export{Name: "gone", Backend: w}); err != nil {
		t.Fatal(err)
	}
	other := newMem(1 << 20)
	if err := srv.AddExport(nbd.Export{Name: "other", Backend: other}); err != nil {
		t.Fatal(err)
	}
	keep := dial(t, addr)
	keep.goExport("other")

	c := dial(t, addr)
	c.goExport("gone")
	handles := map[uint64]bool{}
	for i := range n {
		handles[c.send(cmdWrite, 0, uint64(i)*4096, 4096, fill(4096, byte(i+1)))] = true
	}
	waitFor(t, "the writes to reach the backend", func() bool { return g.entered.Load() == n })

	done := make(chan error, 1)
	go func() { done <- srv.RemoveExport(context.Background(), "gone") }()
	waitFor(t, "the export to leave the list", func() bool { return !slices.Contains(srv.ExportNames(), "gone") })
	if msg := goFails(t, addr, "gone"); !strings.Contains(msg, `no export named "gone"`) {
		t.Errorf("NBD_OPT_GO of the removed export: %q", msg)
	}
	select {
	case err := <-done:
		t.Fatalf("RemoveExport returned %v with %d writes in the backend", err, n)
	default:
	}
	for range n {
		g.release <- struct{}{}
	}
	for range n {
		r, err := c.next()
		if err != nil {
			t.Fatalf("reply %d of %d: %v", n-len(handles)+1, n, err)
		}
		if !handles[r.handle] || r.errno != 0 {
			t.Fatalf("reply %+v: want success for one of the writes sent", r)
		}
		delete(handles, r.handle)
	}
	if !c.closed() {
		t.Fatal("connection open after its export was removed and drained")
	}
	if err := <-done; err != nil {
		t.Fatalf("RemoveExport: %v", err)
	}
	w.removed(t)
	if got := w.calls.Load(); got != n {
		t.Errorf("%d backend calls, want the %d writes", got, n)
	}
	m.mu.Lock()
	for i := range n {
		if got := m.data[i*4096]; got != byte(i+1) {
			t.Errorf("write %d: byte %d, want %d", i, got, i+1)
		}
	}
	m.mu.Unlock()
	keep.mustOK(cmdWrite, 0, 0, 512, fill(512, 9))
	if want := `msg="nbd: export removed" export=gone connections_drained=1`; !strings.Contains(log.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, log.String())
	}
}

// More requests than MaxInFlight: the ones the server read are answered,
// the rest are never run, and every reply comes before the close.
func TestRemoveExportAnswersWhatItRead(t *testing.T) {
	const n = 64
	srv, addr := dynamicServer(t, nil)
	m := newMem(1 << 20)
	g := gateWrites(m)
	t.Cleanup(g.open)
	w := &watched{Backend: m}
	if err := srv.AddExport(nbd.Export{Name: "x", Backend: w}); err != nil {
		t.Fatal(err)
	}
	c := dial(t, addr)
	c.goExport("x")
	var buf []byte
	for i := range n {
		buf = append(buf, request(uint64(i+1), cmdWrite, uint64(i)*4096, 4096, fill(4096, 1))...)
	}
	go c.nc.Write(buf) // more than the socket may take before the server reads
	waitFor(t, "MaxInFlight writes in the backend", func() bool { return g.entered.Load() == int64(srv.MaxInFlight) })
	done := make(chan error, 1)
	go func() { done <- srv.RemoveExport(context.Background(), "x") }()
	g.open()
	answered := map[uint64]bool{}
	for {
		r, err := c.next()
		if err != nil {
			c.nc.Close()
			break // closed after the last reply
		}
		if r.errno != 0 || answered[r.handle] || r.handle < 1 || r.handle > n {
			t.Fatalf("reply %+v (answered before: %v)", r, answered[r.handle])
		}
		answered[r.handle] = true
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w.removed(t)
	if got := w.calls.Load(); int(got) != len(answered) || got < int64(srv.MaxInFlight) {
		t.Fatalf("%d writes reached the backend, %d were answered; want equal, at least %d",
			got, len(answered), srv.MaxInFlight)
	}
	t.Logf("%d of %d pipelined writes read and answered before the close", len(answered), n)
}

func TestRemoveExportUnknown(t *testing.T) {
	srv, _ := dynamicServer(t, nil)
	err := srv.RemoveExport(context.Background(), "nope")
	if !errors.Is(err, nbd.ErrNoSuchExport) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("RemoveExport of an unknown name: %v, want ErrNoSuchExport naming it", err)
	}
	if err := srv.AddExport(nbd.Export{Name: "a", Backend: newMem(4096)}); err != nil {
		t.Fatal(err)
	}
	if err := srv.RemoveExport(context.Background(), "a"); err != nil {
		t.Fatalf("RemoveExport of an idle export: %v", err)
	}
	if err := srv.RemoveExport(context.Background(), "a"); !errors.Is(err, nbd.ErrNoSuchExport) {
		t.Fatalf("second RemoveExport: %v, want ErrNoSuchExport", err)
	}
	// The name can be used again.
	if err := srv.AddExport(nbd.Export{Name: "a", Backend: newMem(4096)}); err != nil {
		t.Fatalf("AddExport of a removed name: %v", err)
	}
}

// RemoveExport with a context that ends before the drain closes the
// connections and returns the context's error.
func TestRemoveExportDeadline(t *testing.T) {
	srv, addr := dynamicServer(t, nil)
	m := newMem(1 << 20)
	g := gateWrites(m)
	t.Cleanup(g.open)
	if err := srv.AddExport(nbd.Export{Name: "x", Backend: m}); err != nil {
		t.Fatal(err)
	}
	c := dial(t, addr)
	c.goExport("x")
	c.send(cmdWrite, 0, 0, 512, fill(512, 1))
	waitFor(t, "the write to reach the backend", func() bool { return g.entered.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 0) // expired: the write is held
	defer cancel()
	err := srv.RemoveExport(ctx, "x")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 of 1 connections closed") {
		t.Fatalf("RemoveExport = %v, want DeadlineExceeded with the connections it closed", err)
	}
	if !c.closed() {
		t.Fatal("connection open after RemoveExport's deadline")
	}
	goFails(t, addr, "x")
}

// Handshakes, additions and removals at the same time: for the race
// detector, and every handshake sees a consistent table.
func TestExportsChangeDuringHandshakes(t *testing.T) {
	srv, addr := dynamicServer(t, nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprint("v", i%4)
			srv.AddExport(nbd.Export{Name: name, Backend: newMem(4096)})
			if i%2 == 1 {
				srv.RemoveExport(context.Background(), fmt.Sprint("v", (i+2)%4))
			}
		}
	}()
	for i := range 200 {
		c := dial(t, addr)
		name := fmt.Sprint("v", i%4)
		last := c.option(optGo, infoData(name))
		switch r := last[len(last)-1]; r.typ {
		case repAck:
			c.send(cmdRead, 0, 0, 512, nil)
			c.next() // a reply, or the close after a removal
		case repErrUnknown:
		default:
			t.Fatalf("GO %s: reply %#x %q", name, r.typ, r.data)
		}
		c.nc.Close()
	}
	close(stop)
	wg.Wait()
}
