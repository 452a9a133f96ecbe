package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/nbd"
)

// Requests the server cannot run get EINVAL and the connection stays up.
func TestInvalidRequests(t *testing.T) {
	m := newMem(1 << 20)
	addr := serveExports(t, nbd.Export{Name: "m", Backend: m})
	c := dial(t, addr)
	c.goExport("m")
	for _, r := range []struct {
		what        string
		typ, flags  uint16
		off, length uint64
	}{
		{"unknown command", 99, 0, 0, 512},
		{"NBD_CMD_CACHE (not advertised)", 5, 0, 0, 512},
		{"NO_HOLE on a read", cmdRead, flagNoHole, 0, 512},
		{"DF without structured replies", cmdRead, flagDF, 0, 512},
		{"REQ_ONE on a write zeroes", cmdWriteZeroes, flagReqOne, 0, 512},
		{"unknown flag", cmdTrim, 1 << 9, 0, 512},
		{"flush with a length", cmdFlush, 0, 0, 512},
		{"flush with an offset", cmdFlush, 0, 512, 0},
		{"zero-length read", cmdRead, 0, 0, 0},
		{"zero-length trim", cmdTrim, 0, 0, 0},
		{"block status without structured replies", cmdBlockStatus, 0, 0, 512},
	} {
		expectErr(t, c.do(r.typ, r.flags, r.off, uint32(r.length), nil), eINVAL, r.what)
	}
	c.mustOK(cmdRead, flagFUA, 0, 512, nil) // FUA is valid on any command
	if calls := m.log(); !slices.Equal(calls, []string{"read 0 512"}) {
		t.Fatalf("refused requests reached the backend: %q", calls)
	}
}

// Alignment to 512 bytes is enforced only for a client that asked for the
// block sizes; others may send any byte range.
func TestAlignment(t *testing.T) {
	v := newVolume(t, 1<<20, nil)
	addr := serveExports(t, v.export("disk"))
	strict := dial(t, addr)
	strict.goExport("disk", infoBlockSize)
	expectErr(t, strict.do(cmdRead, 0, 3, 100, nil), eINVAL, "unaligned read")
	expectErr(t, strict.do(cmdWrite, 0, 512, 100, fill(100, 1)), eINVAL, "unaligned write")
	strict.mustOK(cmdWrite, 0, 512, 512, fill(512, 1))

	loose := dial(t, addr)
	loose.goExport("disk")
	loose.mustOK(cmdWrite, 0, 515, 100, fill(100, 2))
	want := append(append(fill(3, 1), fill(100, 2)...), fill(409, 1)...)
	if got := loose.read(512, 512); !bytes.Equal(got, want) {
		t.Fatal("unaligned write did not merge with the block around it")
	}
	loose.mustOK(cmdWriteZeroes, flagNoHole, 520, 10, nil)
	copy(want[8:18], make([]byte, 10))
	if got := loose.read(512, 512); !bytes.Equal(got, want) {
		t.Fatal("unaligned write zeroes wrong")
	}
	v.checkJournal(t)
}

// FUA writes, trims and zeroes are flushed before the reply; WRITE_ZEROES
// with NO_HOLE writes zeroes, without it trims.
func TestFUAAndZeroes(t *testing.T) {
	m := newMem(1 << 20)
	addr := serveExports(t, nbd.Export{Name: "m", Backend: m})
	c := dial(t, addr)
	c.goExport("m")
	c.mustOK(cmdWrite, flagFUA, 0, 4096, fill(4096, 1))
	c.mustOK(cmdTrim, flagFUA, 4096, 4096, nil)
	c.mustOK(cmdWriteZeroes, flagFUA|flagNoHole, 8192, 4096, nil)
	c.mustOK(cmdWriteZeroes, 0, 12288, 4096, nil)
	c.mustOK(cmdFlush, 0, 0, 0, nil)
	want := []string{"write 0 4096", "flush 0 0", "trim 4096 4096", "flush 0 0", "zero 8192 4096", "flush 0 0",
		"trim 12288 4096", "flush 0 0"}
	if got := m.log(); !slices.Equal(got, want) {
		t.Fatalf("backend calls\n%q\nwant\n%q", got, want)
	}
}

// Backend errors map to NBD errors and leave the connection up.
func TestBackendErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			m := newMem(1 << 20)
			m.fail = func(op string, off int64) error {
				switch {
				case op == "read" && off == 0:
					return errors.New("disk on fire")
				case op == "write" && off == 4096:
					return fmt.Errorf("journal append: %w", syscall.ENOSPC)
				case op == "write" && off == 8192:
					return &net.OpError{Op: "write", Err: syscall.EDQUOT}
				case op == "trim":
					return syscall.EROFS
				case op == "flush":
					return errors.New("fsync failed")
				case op == "zero":
					return fmt.Errorf("volume closed: %w", os.ErrClosed)
				}
				return nil
			}
			addr := serveExports(t, nbd.Export{Name: "m", Backend: m})
			c := dial(t, addr)
			if structured {
				c.negotiateStructured()
			}
			c.goExport("m")
			r := c.do(cmdRead, 0, 0, 4096, nil)
			expectErr(t, r, eIO, "read error")
			if structured && (r.chunk != chunkError || !strings.Contains(r.msg, "disk on fire")) {
				t.Fatalf("read error chunk %d %q", r.chunk, r.msg)
			}
			if !structured && r.data != nil {
				t.Fatal("payload sent with a failed simple read reply")
			}
			expectErr(t, c.do(cmdWrite, 0, 4096, 4096, fill(4096, 1)), eNOSPC, "ENOSPC")
			expectErr(t, c.do(cmdWrite, 0, 8192, 4096, fill(4096, 1)), eNOSPC, "EDQUOT")
			expectErr(t, c.do(cmdTrim, 0, 0, 4096, nil), ePERM, "EROFS")
			expectErr(t, c.do(cmdFlush, 0, 0, 0, nil), eIO, "flush error")
			expectErr(t, c.do(cmdWriteZeroes, flagNoHole, 0, 4096, nil), eSHUTDOWN, "closed backend")
			expectErr(t, c.do(cmdWrite, flagFUA, 12288, 4096, fill(4096, 1)), eIO, "FUA write whose flush fails")
			c.mustOK(cmdWrite, 0, 16384, 4096, fill(4096, 2))
			if got := c.read(16384, 4096); !bytes.Equal(got, fill(4096, 2)) {
				t.Fatal("connection unusable after errors")
			}
		})
	}
}

// Requests of one connection run concurrently and are answered as they
// complete: a read stuck in the backend does not hold up the next one.
func TestRequestsAnsweredAsTheyComplete(t *testing.T) {
	m := newMem(1 << 20)
	release := make(chan struct{})
	m.gate = func(op string, off int64) {
		if op == "read" && off == 0 {
			<-release
		}
	}
	addr := serveExports(t, nbd.Export{Name: "m", Backend: m})
	c := dial(t, addr)
	c.negotiateStructured()
	c.goExport("m")
	slow := c.send(cmdRead, 0, 0, 4096, nil)
	fast := c.send(cmdRead, 0, 4096, 4096, nil)
	write := c.send(cmdWrite, 0, 8192, 4096, fill(4096, 1))
	var order []uint64
	for range 2 {
		r, err := c.next()
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, r.handle)
	}
	close(release)
	r, err := c.next()
	if err != nil {
		t.Fatal(err)
	}
	order = append(order, r.handle)
	if order[2] != slow || !slices.Contains(order[:2], fast) || !slices.Contains(order[:2], write) {
		t.Fatalf("reply order %v; the slow read %d must come last", order, slow)
	}
}

// Shutdown stops accepting, answers requests in flight, then closes; a
// connection still in the handshake is closed at once.
func TestShutdownDrainsRequestsInFlight(t *testing.T) {
	m := newMem(1 << 20)
	entered, release := make(chan struct{}), make(chan struct{})
	m.gate = func(op string, off int64) {
		if op == "write" {
			close(entered)
			<-release
		}
	}
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	addr := serve(t, srv)
	idle := dial(t, addr) // stays in the handshake
	c := dial(t, addr)
	c.goExport("m")
	h := c.send(cmdWrite, 0, 0, 4096, fill(4096, 1))
	<-entered
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	if !idle.closed() {
		t.Fatal("connection in the handshake survived Shutdown")
	}
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		nc.Close()
		t.Fatal("server still accepts connections during Shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	r, err := c.next()
	if err != nil || r.handle != h || r.errno != 0 {
		t.Fatalf("in-flight write: %+v, %v; want an answer", r, err)
	}
	if !c.closed() {
		t.Fatal("connection open after Shutdown drained it")
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if got := m.data[0]; got != 1 {
		t.Fatal("drained write did not reach the backend")
	}
}

// Cancelling Serve's context stops it like Shutdown: the request in flight
// is answered, then the connection is closed and Serve returns.
func TestServeContextCancelDrains(t *testing.T) {
	m := newMem(1 << 20)
	entered, release := make(chan struct{}), make(chan struct{})
	m.gate = func(op string, off int64) {
		if op == "flush" {
			close(entered)
			<-release
		}
	}
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	srv.Logger = quiet
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c := dial(t, ln.Addr().String())
	c.goExport("m")
	h := c.send(cmdFlush, 0, 0, 0, nil)
	<-entered
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if r, err := c.next(); err != nil || r.handle != h || r.errno != 0 {
		t.Fatalf("in-flight flush: %+v, %v; want an answer", r, err)
	}
	if !c.closed() {
		t.Fatal("connection open after Serve's context was cancelled")
	}
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve returned %v, want context.Canceled", err)
	}
	// Shutdown after that has nothing left to do.
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Shutdown with an expired context closes connections that cannot drain.
func TestShutdownDeadline(t *testing.T) {
	m := newMem(1 << 20)
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	m.gate = func(op string, off int64) {
		if op == "write" {
			close(entered)
			<-release
		}
	}
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	srv.Logger = quiet
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	c := dial(t, ln.Addr().String())
	c.goExport("m")
	c.send(cmdWrite, 0, 0, 512, fill(512, 1))
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if !c.closed() {
		t.Fatal("connection open after Shutdown's deadline")
	}
}

func TestConfigErrors(t *testing.T) {
	m := newMem(1 << 20)
	for _, c := range []struct {
		name    string
		exports []nbd.Export
		deflt   string
		want    string
	}{
		{"none", nil, "", "no exports"},
		{"nil backend", []nbd.Export{{Name: "a"}}, "", "no backend"},
		{"duplicate", []nbd.Export{{Name: "a", Backend: m}, {Name: "a", Backend: m}}, "", "unique"},
		{"bad default", []nbd.Export{{Name: "a", Backend: m}}, "b", "default export"},
		{"long name", []nbd.Export{{Name: strings.Repeat("n", 4097), Backend: m}}, "", "at most 4096"},
	} {
		srv := nbd.NewServer()
		srv.Exports, srv.DefaultExport = c.exports, c.deflt
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		err = srv.Serve(context.Background(), ln)
		ln.Close()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Serve returned %v, want an error about %q", c.name, err, c.want)
		}
	}
}

// Replies completed at the same moment are group-written: every request of
// a burst released together is answered exactly once with its own handle
// (how many share a write depends on the scheduler), and a request stuck
// in the backend does not hold back the others' replies.
func TestRepliesCompletedTogetherAllArrive(t *testing.T) {
	const burst = nbd.DefaultMaxInFlight - 1 // one worker stays stuck
	m := newMem(1 << 20)
	var mu sync.Mutex
	arrived := 0
	all := make(chan struct{})
	stuck := make(chan struct{})
	m.gate = func(op string, off int64) {
		if op != "write" {
			return
		}
		if off == 0 {
			<-stuck
			return
		}
		mu.Lock()
		if arrived++; arrived == burst {
			close(all) // every worker is in the backend: release them at once
		}
		mu.Unlock()
		<-all
	}
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	addr := serve(t, srv)
	c := dial(t, addr)
	c.negotiateStructured()
	c.goExport("m")
	slow := c.send(cmdWrite, 0, 0, 4096, fill(4096, 9))
	want := map[uint64]bool{}
	for i := range burst {
		want[c.send(cmdWrite, 0, uint64(4096*(i+1)), 4096, fill(4096, byte(i)))] = true
	}
	for range burst {
		r, err := c.next()
		if err != nil {
			t.Fatal(err)
		}
		if !want[r.handle] || r.errno != 0 {
			t.Fatalf("reply for handle %d (errno %d): not one of the burst, or twice", r.handle, r.errno)
		}
		delete(want, r.handle)
	}
	if w := srv.ReplyWrites(); w > burst {
		t.Errorf("%d replies took %d writes, want at most one each", burst, w)
	}
	close(stuck)
	if r, err := c.next(); err != nil || r.handle != slow {
		t.Fatalf("the stuck write's reply: handle %d, err %v; want handle %d", r.handle, err, slow)
	}
}
