package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/nbd"
)

func dialClient(t *testing.T, addr, name string) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, addr, name)
	if err != nil {
		t.Fatal(err)
	}
	c.Timeout = 30 * time.Second
	t.Cleanup(func() { c.Close() })
	return c
}

// exercise writes, reads back, flushes, trims and zeroes through c and
// checks every read against a model of the export.
func exercise(t *testing.T, c *nbd.Client, size int64) {
	t.Helper()
	model := make([]byte, size)
	if _, err := c.ReadAt(model, 0); err != nil {
		t.Fatalf("read the initial content: %v", err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	check := func(what string) {
		t.Helper()
		got := make([]byte, size)
		if n, err := c.ReadAt(got, 0); err != nil || n != len(got) {
			t.Fatalf("after %s: read %d bytes: %v", what, n, err)
		}
		if i := firstDiff(got, model); i >= 0 {
			t.Fatalf("after %s: byte %d reads %#x, want %#x", what, i, got[i], model[i])
		}
	}
	for _, w := range []struct{ off, n int64 }{{0, 4096}, {8192, 1 << 20}, {12345, 777}, {size - 4096, 4096}, {3 << 20, 65536}} {
		b := make([]byte, w.n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if n, err := c.WriteAt(b, w.off); err != nil || n != len(b) {
			t.Fatalf("write %d at %d: %d, %v", w.n, w.off, n, err)
		}
		copy(model[w.off:], b)
	}
	check("writes")
	if err := c.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if err := c.Trim(8192, 256<<10); err != nil {
		t.Fatalf("trim: %v", err)
	}
	clear(model[8192 : 8192+256<<10])
	check("trim")
	if err := c.WriteZeroes(3<<20+100, 5000); err != nil {
		t.Fatalf("write zeroes: %v", err)
	}
	clear(model[3<<20+100 : 3<<20+5100])
	check("write zeroes")
	if err := c.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

func TestClientAgainstTrackerVolume(t *testing.T) {
	v := newVolume(t, 8<<20, func(f *os.File) { f.WriteAt(bytes.Repeat([]byte("lifeboat"), 4096), 1<<20) })
	addr := serveExports(t, v.export("disk"))
	c := dialClient(t, addr, "disk")
	if c.Size() != 8<<20 || c.ReadOnly() || !c.CanFlush() || !c.CanTrim() || !c.CanZero() {
		t.Fatalf("size %d, ro %v, flush %v, trim %v, zero %v", c.Size(), c.ReadOnly(), c.CanFlush(), c.CanTrim(), c.CanZero())
	}
	exercise(t, c, c.Size())
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); !errors.Is(err, nbd.ErrClientClosed) {
		t.Errorf("read after close: %v, want ErrClientClosed", err)
	}
	// Every write, trim and zero went through tracker.Volume.
	v.checkJournal(t)
}

func TestClientSplitsLargeRequests(t *testing.T) {
	m := newMem(nbd.MaxPayload + 3<<20)
	addr := serveExports(t, nbd.Export{Name: "mem", Backend: m})
	c := dialClient(t, addr, "mem")
	b := bytes.Repeat([]byte{0xab}, int(c.Size())-4096)
	if n, err := c.WriteAt(b, 4096); err != nil || n != len(b) {
		t.Fatalf("write %d bytes: %d, %v", len(b), n, err)
	}
	got := make([]byte, len(b))
	if _, err := c.ReadAt(got, 4096); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, b))
	}
	writes := 0
	for _, l := range m.log() {
		if strings.HasPrefix(l, "write ") {
			writes++
		}
	}
	if writes != 2 {
		t.Errorf("%d WRITE requests for %d bytes, want 2 (max payload %d)", writes, len(b), nbd.MaxPayload)
	}
}

func TestClientErrors(t *testing.T) {
	m := newMem(1 << 20)
	m.fail = func(op string, off int64) error {
		if op == "read" && off == 4096 {
			return errors.New("injected")
		}
		return nil
	}
	addr := serveExports(t, nbd.Export{Name: "rw", Backend: m}, nbd.Export{Name: "ro", Backend: newMem(1 << 20), ReadOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nbd.Dial(ctx, addr, "nope"); err == nil || !strings.Contains(err.Error(), `no export named "nope"`) {
		t.Errorf("unknown export: %v", err)
	}
	c := dialClient(t, addr, "rw")
	var re *nbd.ReplyError
	if _, err := c.ReadAt(make([]byte, 4096), 1<<20); !errors.As(err, &re) || re.Errno != 22 {
		t.Errorf("read past the end: %v, want errno 22 (EINVAL)", err)
	}
	if _, err := c.ReadAt(make([]byte, 4096), 4096); !errors.As(err, &re) || re.Errno != 5 {
		t.Errorf("backend failure: %v, want errno 5 (EIO)", err)
	}
	// Errors the server answers leave the connection usable.
	if _, err := c.WriteAt([]byte("still here"), 0); err != nil {
		t.Errorf("write after errors: %v", err)
	}
	ro := dialClient(t, addr, "ro")
	if !ro.ReadOnly() {
		t.Error("read-only export not reported as such")
	}
	if _, err := ro.WriteAt([]byte("x"), 0); !errors.Is(err, nbd.ErrUnsupported) {
		t.Errorf("write to a read-only export: %v, want ErrUnsupported", err)
	}
	if err := ro.Trim(0, 4096); !errors.Is(err, nbd.ErrUnsupported) {
		t.Errorf("trim on a read-only export: %v, want ErrUnsupported", err)
	}
	if err := ro.Flush(); err != nil {
		t.Errorf("flush on a read-only export: %v", err)
	}
}

// TestClientAgainstNbdkit checks the client against a server that is not
// ours.
func TestClientAgainstNbdkit(t *testing.T) {
	requireTool(t, "nbdkit")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command("nbdkit", "-f", "-U", sock, "memory", "8M")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var nc net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if nc, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("nbdkit did not start: %v", err)
	}
	defer nc.Close()
	c, err := nbd.NewClient(context.Background(), nc, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 8<<20 {
		t.Fatalf("size %d, want 8 MiB", c.Size())
	}
	exercise(t, c, c.Size())
}

// TestClientHandshakeContext checks that a server that never greets does
// not hang Dial past its context.
func TestClientHandshakeContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c) // silent until the client hangs up
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = nbd.Dial(ctx, ln.Addr().String(), "x")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("Dial to a silent server: %v after %v, want context.DeadlineExceeded", err, time.Since(start))
	}
}
