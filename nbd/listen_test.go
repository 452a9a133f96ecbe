package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/nbd"
)

// serveOn serves srv on ln until the test ends.
func serveOn(t *testing.T, srv *nbd.Server, ln net.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, nbd.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
}

// staleSocket leaves a socket file at path that nothing listens on, as a
// killed process does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
}

// unix:PATH serves on a Unix socket of mode 0660, created in a missing
// directory, named in the URI; the socket is gone after Shutdown and no
// temporary directory is left beside it.
func TestListenUnix(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "nbd.sock")
	var log logBuffer
	ln, err := nbd.Listen("unix:"+path, log.logger())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket %s has mode %v, want a socket with 0660", path, fi.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%s holds %v, want only the socket", dir, ents)
	}
	if got, want := nbd.URI(ln.Addr(), "m"), "nbd+unix:///m?socket="+path; got != want {
		t.Fatalf("URI %q, want %q", got, want)
	}
	m := newMem(1 << 20)
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "m", Backend: m}}
	srv.Logger = log.logger()
	serveOn(t, srv, ln)
	c := dial(t, "unix:"+path)
	c.goExport("m")
	c.mustOK(cmdWrite, 0, 4096, 4096, fill(4096, 3))
	if got := c.read(4096, 4096); !bytes.Equal(got, fill(4096, 3)) {
		t.Fatal("read back over the Unix socket differs")
	}
	if want := fmt.Sprintf(`remote="unix:pid=%d,uid=%d"`, os.Getpid(), os.Getuid()); !strings.Contains(log.String(), want) {
		t.Fatalf("log does not name the peer as %s:\n%s", want, log.String())
	}
	if strings.Contains(log.String(), "non-loopback") {
		t.Fatalf("warning for a Unix socket:\n%s", log.String())
	}
	c.send(cmdDisc, 0, 0, 0, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the socket file to be removed", func() bool {
		_, err := os.Lstat(path)
		return errors.Is(err, fs.ErrNotExist)
	})
}

// A socket that nothing answers on is replaced (logged); a live socket or
// a file that is not a socket is refused and left alone.
func TestListenUnixExistingPath(t *testing.T) {
	dir := t.TempDir()
	t.Run("stale", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		staleSocket(t, path)
		var log logBuffer
		ln, err := nbd.Listen("unix:"+path, log.logger())
		if err != nil {
			t.Fatalf("stale socket not replaced: %v", err)
		}
		defer ln.Close()
		if !strings.Contains(log.String(), "stale socket") {
			t.Fatalf("replacement not logged:\n%s", log.String())
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o660 {
			t.Fatalf("replaced socket: %v, %v", fi, err)
		}
		nc, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("the new socket does not answer: %v", err)
		}
		nc.Close()
	})
	t.Run("live", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		ln, err := nbd.Listen("unix:"+path, quiet)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, err = nbd.Listen("unix:"+path, quiet)
		if !errors.Is(err, nbd.ErrAddress) || !strings.Contains(err.Error(), "another process serves") {
			t.Fatalf("second Listen on a live socket: %v", err)
		}
		if nc, err := net.Dial("unix", path); err != nil {
			t.Fatalf("the first listener lost its socket: %v", err)
		} else {
			nc.Close()
		}
	})
	t.Run("regular file", func(t *testing.T) {
		path := filepath.Join(dir, "file.sock")
		os.WriteFile(path, []byte("keep"), 0o600)
		_, err := nbd.Listen("unix:"+path, quiet)
		if !errors.Is(err, nbd.ErrAddress) || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Listen on a regular file: %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "keep" {
			t.Fatal("the regular file was changed")
		}
	})
	t.Run("replaced while serving", func(t *testing.T) {
		path := filepath.Join(dir, "moved.sock")
		ln, err := nbd.Listen("unix:"+path, quiet)
		if err != nil {
			t.Fatal(err)
		}
		other := filepath.Join(dir, "other")
		os.WriteFile(other, []byte("someone else's"), 0o600)
		if err := os.Rename(other, path); err != nil {
			t.Fatal(err)
		}
		ln.Close()
		if b, _ := os.ReadFile(path); string(b) != "someone else's" {
			t.Fatal("Close removed a file that is no longer its socket")
		}
	})
	t.Run("too long", func(t *testing.T) {
		_, err := nbd.Listen("unix:"+filepath.Join(dir, strings.Repeat("s", 100)), quiet)
		if !errors.Is(err, nbd.ErrAddress) {
			t.Fatalf("Listen on a 100-byte name: %v", err)
		}
	})
	t.Run("no path", func(t *testing.T) {
		if _, err := nbd.Listen("unix:", quiet); !errors.Is(err, nbd.ErrAddress) {
			t.Fatalf("Listen on unix: without a path: %v", err)
		}
	})
}

// A TCP listener that is not on loopback is logged as a warning: NBD has
// no authentication.
func TestListenWarnsOffLoopback(t *testing.T) {
	var log logBuffer
	ln, err := nbd.Listen("127.0.0.1:0", log.logger())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got, want := nbd.URI(ln.Addr(), "db"), "nbd://"+ln.Addr().String()+"/db"; got != want {
		t.Fatalf("URI %q, want %q", got, want)
	}
	nbd.WarnExposed(log.logger(), &net.TCPAddr{IP: net.IPv6loopback, Port: 10809})
	if log.String() != "" {
		t.Fatalf("warning for loopback:\n%s", log.String())
	}
	for _, ip := range []net.IP{net.IPv4zero, net.IPv6unspecified, net.IPv4(192, 0, 2, 7)} {
		var log logBuffer
		nbd.WarnExposed(log.logger(), &net.TCPAddr{IP: ip, Port: 10809})
		if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "no authentication") {
			t.Errorf("%v: no warning:\n%s", ip, log.String())
		}
	}
}
