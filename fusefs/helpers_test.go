package fusefs_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/fusefs"
	"lifeboat/internal/testenv"
	"lifeboat/tracker"
)

var quiet = slog.New(slog.DiscardHandler)

// requireFUSE skips the test unless it runs as root with /dev/fuse and the
// named tools; with LIFEBOAT_REQUIRE_INTEGRATION=1 it fails instead.
func requireFUSE(t testing.TB, tools ...string) {
	t.Helper()
	testenv.FUSE(t)
	testenv.Tools(t, tools...)
}

// mountFiles mounts files on a new temporary directory and unmounts it when
// the test ends, whatever happened: a mount that stays busy is detached
// lazily rather than left behind.
func mountFiles(t testing.TB, files ...fusefs.File) (*fusefs.Mount, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &fusefs.Mount{Dir: dir, Files: files, Logger: quiet}
	if err := m.Mount(context.Background()); err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { unmount(t, m) })
	return m, dir
}

func unmount(t testing.TB, m *fusefs.Mount) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := m.Unmount()
		if err == nil {
			return
		}
		// A loop device releases its file asynchronously after
		// losetup -d: retry for a while before giving up.
		if !errors.Is(err, fusefs.ErrBusy) || time.Now().After(deadline) {
			t.Errorf("unmount: %v; detaching lazily", err)
			if err := syscall.Unmount(m.Dir, syscall.MNT_DETACH); err != nil {
				t.Errorf("lazy unmount of %s: %v", m.Dir, err)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openVolume opens a tracker volume over a new sparse file of size bytes and
// closes it when the test ends.
func openVolume(t testing.TB, size int64) (*tracker.Volume, string) {
	t.Helper()
	dir := t.TempDir()
	backing := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	v := tracker.NewVolume(backing, filepath.Join(dir, "journal"))
	v.SegmentAge = 0
	v.Logger = quiet
	if err := v.Open(context.Background()); err != nil {
		t.Fatalf("open volume: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v, backing
}

// call is one backend call recorded by fakeBackend.
type call struct {
	Op     string
	Off, N int64
}

// fakeBackend is an in-memory Backend that records the calls that change
// it and fails with err when err is set.
type fakeBackend struct {
	mu    sync.Mutex
	data  []byte
	calls []call
	err   error
}

var _ fusefs.Backend = (*fakeBackend)(nil)

func newFake(size int) *fakeBackend { return &fakeBackend{data: make([]byte, size)} }

func (f *fakeBackend) record(op string, off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{op, off, n})
	if f.err != nil {
		return f.err
	}
	if off < 0 || n < 0 || off+n > int64(len(f.data)) {
		return fmt.Errorf("fake: [%d, %d) outside %d bytes", off, off+n, len(f.data))
	}
	return nil
}

func (f *fakeBackend) ReadAt(p []byte, off int64) (int, error) {
	if err := f.record("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return copy(p, f.data[off:]), nil
}

func (f *fakeBackend) WriteAt(p []byte, off int64) (int, error) {
	if err := f.record("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return copy(f.data[off:], p), nil
}

func (f *fakeBackend) WriteZeroes(off, n int64) error { return f.zero("zero", off, n) }
func (f *fakeBackend) Trim(off, n int64) error        { return f.zero("trim", off, n) }

func (f *fakeBackend) zero(op string, off, n int64) error {
	if err := f.record(op, off, n); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.data[off : off+n])
	return nil
}

func (f *fakeBackend) Flush() error { return f.record("flush", 0, 0) }
func (f *fakeBackend) Size() int64  { return int64(len(f.data)) }

// takeCalls returns the recorded calls other than reads and forgets them.
func (f *fakeBackend) takeCalls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []call
	for _, c := range f.calls {
		if c.Op != "read" {
			out = append(out, c)
		}
	}
	f.calls = nil
	return out
}

func (f *fakeBackend) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// run runs a command and fails the test with its output if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// readAll reads the whole file at path.
func readAll(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}
