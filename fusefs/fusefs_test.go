package fusefs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"lifeboat/fusefs"
	"lifeboat/tracker"
)

var _ fusefs.Backend = (*tracker.Volume)(nil)

func TestConfigRejected(t *testing.T) {
	b := newFake(4096)
	for name, m := range map[string]*fusefs.Mount{
		"no dir":       {Files: []fusefs.File{{Name: "a", Backend: b}}},
		"no files":     {Dir: "/x"},
		"empty name":   {Dir: "/x", Files: []fusefs.File{{Backend: b}}},
		"slash":        {Dir: "/x", Files: []fusefs.File{{Name: "a/b", Backend: b}}},
		"dot dot":      {Dir: "/x", Files: []fusefs.File{{Name: "..", Backend: b}}},
		"duplicate":    {Dir: "/x", Files: []fusefs.File{{Name: "a", Backend: b}, {Name: "a", Backend: b}}},
		"no backend":   {Dir: "/x", Files: []fusefs.File{{Name: "a"}}},
		"mounted none": nil,
	} {
		t.Run(name, func(t *testing.T) {
			if m == nil {
				if err := (&fusefs.Mount{}).Unmount(); err != nil {
					t.Fatalf("Unmount before Mount: %v, want nil", err)
				}
				return
			}
			if err := m.Mount(context.Background()); !errors.Is(err, fusefs.ErrConfig) {
				t.Fatalf("Mount: got %v, want ErrConfig", err)
			}
		})
	}
}

func TestAttributes(t *testing.T) {
	requireFUSE(t)
	const size = 3<<20 + 512
	_, dir := mountFiles(t,
		fusefs.File{Name: "rw", Backend: newFake(size)},
		fusefs.File{Name: "ro", Backend: newFake(4096), ReadOnly: true})
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"ro", "rw"}; !slices.Equal(names, want) {
		t.Errorf("entries: got %v, want %v", names, want)
	}
	for _, tc := range []struct {
		name string
		size int64
		mode os.FileMode
	}{{"rw", size, 0o600}, {"ro", 4096, 0o400}} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, tc.name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != tc.size || st.Mode != syscall.S_IFREG|uint32(tc.mode) || st.Blocks != (tc.size+511)/512 || st.Nlink != 1 {
			t.Errorf("%s: got size %d mode %o blocks %d nlink %d, want %d %o %d 1",
				tc.name, st.Size, st.Mode, st.Blocks, st.Nlink, tc.size, syscall.S_IFREG|uint32(tc.mode), (tc.size+511)/512)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil || st.Mode != syscall.S_IFDIR|0o700 || int(st.Uid) != os.Getuid() {
		t.Errorf("mount root: mode %o uid %d (%v), want %o and uid %d", st.Mode, st.Uid, err, syscall.S_IFDIR|0o700, os.Getuid())
	}
	if _, err := os.OpenFile(filepath.Join(dir, "ro"), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open read-only file for writing: got %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o600); err == nil {
		t.Errorf("creating a file in the mount root succeeded")
	}
}

func TestResizeRefused(t *testing.T) {
	requireFUSE(t)
	const size = 1 << 20
	b := newFake(size)
	_, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: b})
	path := filepath.Join(dir, "vol")
	if err := os.Truncate(path, size/2); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate: got %v, want EPERM", err)
	}
	if err := os.Truncate(path, 2*size); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate to grow: got %v, want EPERM", err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Errorf("truncate to the same size: got %v, want nil", err)
	}
	// The kernel opens the file, then truncates it with a SETATTR of
	// size 0, which fails; open(2) returns that error.
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_TRUNC, 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("open with O_TRUNC: got %v, want EPERM", err)
		if err == nil {
			f.Close()
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("ftruncate: got %v, want EPERM", err)
	}
	if err := os.Chmod(path, 0o644); !errors.Is(err, syscall.EPERM) {
		t.Errorf("chmod: got %v, want EPERM", err)
	}
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Errorf("chtimes: %v", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size || !st.ModTime().Equal(mtime) {
		t.Errorf("after the refused resizes: size %d mtime %v, want %d %v", st.Size(), st.ModTime(), size, mtime)
	}
	for _, c := range b.takeCalls() {
		if c.Op != "flush" {
			t.Errorf("unexpected backend call %+v", c)
		}
	}
}

func TestAllocate(t *testing.T) {
	requireFUSE(t)
	const size = 1 << 20
	const (
		keep  = unix.FALLOC_FL_KEEP_SIZE
		punch = unix.FALLOC_FL_PUNCH_HOLE
		zero  = unix.FALLOC_FL_ZERO_RANGE
	)
	b := newFake(size)
	_, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: b})
	f, err := os.OpenFile(filepath.Join(dir, "vol"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name      string
		mode      uint32
		off, n    int64
		wantErr   error
		wantCalls []call
	}{
		{"punch", punch | keep, 4096, 8192, nil, []call{{"trim", 4096, 8192}}},
		{"punch odd", punch | keep, 1000, 3, nil, []call{{"trim", 1000, 3}}},
		{"zero keep size", zero | keep, 512, 1 << 16, nil, []call{{"zero", 512, 1 << 16}}},
		{"zero inside", zero, 0, size, nil, []call{{"zero", 0, size}}},
		{"punch past the end is clamped", punch | keep, size - 4096, 1 << 20, nil, []call{{"trim", size - 4096, 4096}}},
		{"zero past the end is clamped", zero | keep, size - 1, 2, nil, []call{{"zero", size - 1, 1}}},
		{"punch beyond the end", punch | keep, size, 4096, nil, nil},
		{"zero that grows the file", zero, size - 4096, 8192, syscall.EPERM, nil},
		{"preallocate", 0, 0, 4096, syscall.EOPNOTSUPP, nil},
		{"preallocate keep size", keep, 0, 4096, syscall.EOPNOTSUPP, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := unix.Fallocate(int(f.Fd()), tc.mode, tc.off, tc.n)
			if !errors.Is(err, tc.wantErr) && !(err == nil && tc.wantErr == nil) {
				t.Errorf("fallocate(%#x, %d, %d): got %v, want %v", tc.mode, tc.off, tc.n, err, tc.wantErr)
			}
			if got := b.takeCalls(); !slices.Equal(got, tc.wantCalls) {
				t.Errorf("backend calls: got %+v, want %+v", got, tc.wantCalls)
			}
		})
	}
	if st, _ := f.Stat(); st.Size() != size {
		t.Errorf("size after fallocate: got %d, want %d", st.Size(), size)
	}
}

// TestAllocateVolume punches and zeroes ranges of a real tracker.Volume
// through the mount; they read as zeros through the mount and the volume.
func TestAllocateVolume(t *testing.T) {
	requireFUSE(t)
	const size = 4 << 20
	v, _ := openVolume(t, size)
	_, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: v})
	f, err := os.OpenFile(filepath.Join(dir, "vol"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ones := make([]byte, size)
	for i := range ones {
		ones[i] = 0xa5
	}
	if _, err := f.WriteAt(ones, 0); err != nil {
		t.Fatal(err)
	}
	model := slices.Clone(ones)
	for _, r := range []struct {
		mode   uint32
		off, n int64
	}{
		{unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 1 << 20, 256 << 10},
		{unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 3000, 5000},
		{unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, 2 << 20, 12345},
		{unix.FALLOC_FL_ZERO_RANGE, size - 4096, 4096},
	} {
		if err := unix.Fallocate(int(f.Fd()), r.mode, r.off, r.n); err != nil {
			t.Fatalf("fallocate(%#x, %d, %d): %v", r.mode, r.off, r.n, err)
		}
		clear(model[r.off : r.off+r.n])
	}
	viaVolume := make([]byte, size)
	if _, err := v.ReadAt(viaVolume, 0); err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"mount": readAll(t, f.Name()), "volume": viaVolume} {
		if i := firstDiff(got, model); i >= 0 {
			t.Errorf("via the %s: first difference at %d: got %#x, want %#x", name, i, got[i], model[i])
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func TestBackendErrors(t *testing.T) {
	requireFUSE(t)
	b := newFake(1 << 20)
	_, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: b})
	f, err := os.OpenFile(filepath.Join(dir, "vol"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{errors.New("disk on fire"), syscall.EIO},
		{fmt.Errorf("write backing: %w", &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}), syscall.ENOSPC},
		{tracker.ErrClosed, syscall.EIO},
	} {
		b.setErr(tc.err)
		for op, fn := range map[string]func() error{
			"read":  func() error { _, err := f.ReadAt(buf, 0); return err },
			"write": func() error { _, err := f.WriteAt(buf, 0); return err },
			"fsync": f.Sync,
			"trim": func() error {
				return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
			},
		} {
			if err := fn(); !errors.Is(err, tc.want) {
				t.Errorf("%s with backend error %q: got %v, want %v", op, tc.err, err, tc.want)
			}
		}
	}
	b.setErr(nil)
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Errorf("write after the backend recovered: %v", err)
	}
}

// TestFlush checks that fsync and the close of a handle open for writing
// flush the backend, and closing a read-only handle does not.
func TestFlush(t *testing.T) {
	requireFUSE(t)
	b := newFake(1 << 20)
	_, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: b})
	path := filepath.Join(dir, "vol")
	flushes := func() (n int) {
		for _, c := range b.takeCalls() {
			if c.Op == "flush" {
				n++
			}
		}
		return n
	}
	r, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if n := flushes(); n != 0 {
		t.Errorf("close of a read-only handle: %d flushes, want 0", n)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(w.Fd())); err != nil {
		t.Fatal(err)
	}
	if n := flushes(); n != 2 {
		t.Errorf("fsync and fdatasync: %d flushes, want 2", n)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := flushes(); n != 1 {
		t.Errorf("close of a handle open for writing: %d flushes, want 1", n)
	}
}

func TestUnmount(t *testing.T) {
	requireFUSE(t)
	m, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: newFake(4096)})
	if err := m.Mount(context.Background()); !errors.Is(err, fusefs.ErrMounted) {
		t.Errorf("second Mount: got %v, want ErrMounted", err)
	}
	f, err := os.Open(filepath.Join(dir, "vol"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(); !errors.Is(err, fusefs.ErrBusy) {
		t.Errorf("Unmount with an open file: got %v, want ErrBusy", err)
	}
	select {
	case <-m.Done():
		t.Fatal("Done closed after a failed Unmount")
	default:
	}
	f.Close()
	if err := m.Unmount(); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	<-m.Done()
	if err := m.Unmount(); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vol")); err == nil {
		t.Errorf("volume file still visible after Unmount")
	}
}

func TestExternalUnmount(t *testing.T) {
	requireFUSE(t)
	m, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: newFake(4096)})
	if err := syscall.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after an external umount")
	}
	if err := m.Unmount(); err != nil {
		t.Errorf("Unmount after an external umount: %v", err)
	}
}
