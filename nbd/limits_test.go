package nbd_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lifeboat/nbd"
)

// logBuffer collects a server's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds; the timeout only bounds a failure.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gatedWrites makes m's writes wait for a token on release, and counts the
// writes in the backend now (in) and at most (most).
type gatedWrites struct {
	release     chan struct{}
	entered, in atomic.Int64
	most        atomic.Int64
	once        sync.Once
}

// open lets every write through, so that a failed test can stop its
// server: register it with t.Cleanup after serve (cleanups run last first).
func (g *gatedWrites) open() { g.once.Do(func() { close(g.release) }) }

func gateWrites(m *memBackend) *gatedWrites {
	g := &gatedWrites{release: make(chan struct{}, 1024)}
	m.gate = func(op string, off int64) {
		if op != "write" {
			return
		}
		n := g.in.Add(1)
		for {
			if p := g.most.Load(); n <= p || g.most.CompareAndSwap(p, n) {
				break
			}
		}
		g.entered.Add(1)
		<-g.release
		g.in.Add(-1)
	}
	return g
}

// request encodes a request header and its payload, for pipelining from
// another goroutine (the client's helpers fail the test, which only the
// test's goroutine may do).
func request(handle uint64, typ uint16, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// A client pipelining 32 MiB writes into a backend that holds them never
// makes the connection hold more than its budget: the reader stops reading
// (the writes back up in the socket), and continues as writes complete.
// Nothing is refused.
func TestInFlightBudgetStopsReadingWrites(t *testing.T) {
	const n, size = 8, nbd.MaxPayload
	m := newMem(2 * size)
	g := gateWrites(m)
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	budget := srv.MaxInFlightBytes
	if budget != nbd.DefaultMaxInFlightBytes || budget < nbd.MaxPayload {
		t.Fatalf("default budget %d, want %d (at least MaxPayload)", budget, nbd.DefaultMaxInFlightBytes)
	}
	addr := serve(t, srv)
	t.Cleanup(g.open)
	c := dial(t, addr)
	c.nc.SetDeadline(time.Now().Add(5 * time.Minute))
	c.goExport("m")
	sent := make(chan error, 1)
	go func() {
		for i := range n {
			p := fill(size, byte(i+1))
			if _, err := c.nc.Write(request(uint64(i+1), cmdWrite, uint64(i%2)*size, size, p)); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	perRequest := int64(budget / size) // writes the budget holds at once
	for i := range int64(n) {
		admitted := min(i+perRequest, n)
		waitFor(t, fmt.Sprintf("%d writes in the backend", admitted), func() bool { return g.entered.Load() == admitted })
		if admitted < n {
			// The next write is not read: its reader waits for budget.
			waitFor(t, "the reader to wait for budget", func() bool { return srv.ReadersWaiting() == 1 })
		}
		if held := srv.HeldBytes(); held > budget {
			t.Fatalf("after %d writes admitted the server holds %d bytes, budget %d", admitted, held, budget)
		}
		if got := g.entered.Load(); got != admitted {
			t.Fatalf("%d writes reached the backend, want %d", got, admitted)
		}
		g.release <- struct{}{}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	for range n {
		r, err := c.next()
		if err != nil || r.errno != 0 {
			t.Fatalf("write reply %+v, %v", r, err)
		}
	}
	if peak := srv.PeakConnBytes(); peak > budget {
		t.Fatalf("a connection held %d bytes, budget %d", peak, budget)
	}
	if most := g.most.Load(); most != perRequest {
		t.Fatalf("%d writes were in the backend at once, want %d (budget %d / %d)", most, perRequest, budget, size)
	}
	if got := c.read(uint64(n-1)%2*size, 4096); !bytes.Equal(got, fill(4096, n)) {
		t.Fatal("the last write did not land")
	}
	// The server releases a reply's buffer after it is written, so the
	// client can hold the reply before the budget is back.
	waitFor(t, "every byte released after the replies", func() bool { return srv.HeldBytes() == 0 })
}

// A client that sends 32 MiB reads and does not read the replies makes the
// server hold at most its budget of reply buffers; the replies are all
// there once it reads.
func TestInFlightBudgetBoundsUnreadReplies(t *testing.T) {
	const n, size = 6, nbd.MaxPayload
	m := newMem(size)
	for i := range m.data {
		m.data[i] = byte(i / 4096)
	}
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	addr := serve(t, srv)
	c := dial(t, addr)
	c.nc.SetDeadline(time.Now().Add(5 * time.Minute))
	c.goExport("m")
	for range n {
		c.send(cmdRead, 0, 0, size, nil)
	}
	waitFor(t, "the reader to wait for budget", func() bool { return srv.ReadersWaiting() == 1 })
	if held := srv.HeldBytes(); held > srv.MaxInFlightBytes {
		t.Fatalf("server holds %d bytes of replies, budget %d", held, srv.MaxInFlightBytes)
	}
	for range n {
		r, err := c.next()
		if err != nil || r.errno != 0 || !bytes.Equal(r.data, m.data) {
			t.Fatalf("read reply: errno %d, %v, %d bytes", r.errno, err, len(r.data))
		}
	}
	if peak := srv.PeakConnBytes(); peak > srv.MaxInFlightBytes {
		t.Fatalf("a connection held %d bytes, budget %d", peak, srv.MaxInFlightBytes)
	}
}

// A request larger than the whole budget runs, alone: the next one waits
// until it is done.
func TestRequestLargerThanBudgetRunsAlone(t *testing.T) {
	m := newMem(16 << 20)
	g := gateWrites(m)
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	srv.MaxInFlightBytes = 1 << 20
	addr := serve(t, srv)
	t.Cleanup(g.open)
	c := dial(t, addr)
	c.goExport("m")
	c.send(cmdWrite, 0, 0, 4<<20, fill(4<<20, 1))
	c.send(cmdWrite, 0, 4<<20, 4<<20, fill(4<<20, 2))
	waitFor(t, "the first write in the backend", func() bool { return g.entered.Load() == 1 })
	waitFor(t, "the reader to wait for budget", func() bool { return srv.ReadersWaiting() == 1 })
	if held := srv.HeldBytes(); held != 4<<20 {
		t.Fatalf("server holds %d bytes, want the lone 4 MiB write", held)
	}
	g.release <- struct{}{}
	waitFor(t, "the second write in the backend", func() bool { return g.entered.Load() == 2 })
	g.release <- struct{}{}
	for range 2 {
		if r, err := c.next(); err != nil || r.errno != 0 {
			t.Fatalf("write reply %+v, %v", r, err)
		}
	}
	if peak := srv.PeakConnBytes(); peak != 4<<20 {
		t.Fatalf("peak %d bytes, want one 4 MiB write at a time", peak)
	}
}

// Over MaxConnections a connection is refused with an NBD error that the
// client shows, and logged with its address and the cap; the admitted
// connections keep working, and a freed slot admits a new one.
func TestMaxConnections(t *testing.T) {
	m := newMem(1 << 20)
	var log logBuffer
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	srv.MaxConnections = 2
	srv.Logger = log.logger()
	addr := serve(t, srv)
	c1, c2 := dial(t, addr), dial(t, addr)
	c1.goExport("m")
	c2.goExport("m")

	c3 := dial(t, addr)
	local := c3.nc.LocalAddr().String()
	for _, opt := range []uint32{optStructuredReply, optGo} {
		data := []byte(nil)
		if opt == optGo {
			data = infoData("m")
		}
		r := c3.option(opt, data)
		if last := r[len(r)-1]; last.typ != 1<<31|2 || !strings.Contains(string(last.data), "limit of 2 connections") {
			t.Fatalf("option %d over the cap: reply %#x %q, want NBD_REP_ERR_POLICY naming the limit", opt, last.typ, last.data)
		}
	}
	c3.sendOption(optExportName, []byte("m"))
	if !c3.closed() {
		t.Fatal("refused connection still open after NBD_OPT_EXPORT_NAME")
	}
	for _, want := range []string{"too many connections", "max_connections=2", "remote=" + local} {
		if !strings.Contains(log.String(), want) {
			t.Fatalf("log lacks %q:\n%s", want, log.String())
		}
	}

	c1.mustOK(cmdWrite, 0, 0, 4096, fill(4096, 5))
	if got := c2.read(0, 4096); !bytes.Equal(got, fill(4096, 5)) {
		t.Fatal("admitted connections do not work while one is refused")
	}
	c1.send(cmdDisc, 0, 0, 0, nil)
	waitFor(t, "the server to let go of the closed connection", func() bool { s, _ := srv.Connections(); return s == 1 })
	c4 := dial(t, addr)
	if size, _ := c4.goExport("m"); size != 1<<20 {
		t.Fatalf("size %d after a slot was freed", size)
	}
}

// Refusals are bounded too: past 16 connections being refused at once,
// more are closed at once (and logged).
func TestRefusalsBounded(t *testing.T) {
	var log logBuffer
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: newMem(4096)}}
	srv.MaxConnections = 1
	srv.Logger = log.logger()
	addr := serve(t, srv)
	dial(t, addr).goExport("m")
	for range 16 {
		dial(t, addr) // refused, idle in the handshake
	}
	waitFor(t, "16 connections being refused", func() bool { _, r := srv.Connections(); return r == 16 })
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := nc.Read(make([]byte, 18)); err == nil {
		t.Fatalf("connection beyond the refusal bound got %d bytes of greeting", n)
	}
	if !strings.Contains(log.String(), "closed at once") {
		t.Fatalf("no log line for the dropped connection:\n%s", log.String())
	}
}

// A real client over the cap shows the server's reason (qemu prints it;
// libnbd only in its debug output).
func TestMaxConnectionsClientSeesReason(t *testing.T) {
	requireTool(t, "qemu-io")
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: newMem(1 << 20)}}
	srv.MaxConnections = 1
	addr := serve(t, srv)
	dial(t, addr).goExport("m")
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 512", uri(addr, "m")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "limit of 1 connections") {
		t.Fatalf("qemu-io over the cap: %v\n%s", err, out)
	}
}
