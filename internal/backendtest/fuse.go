package backendtest

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"lifeboat/fusefs"
	"lifeboat/internal/testenv"
)

// RunFUSE mounts backends made by f with fusefs.Mount and checks, each on
// a new backend:
//   - ReadWrite: pwrite and pread at unaligned offsets and sizes (inside a
//     4 KiB block, across blocks, up to the end), fsync, against the model,
//     through the mount and with the backend's ReadAt;
//   - Fallocate: PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE at unaligned ranges
//     read as zeros, the bytes around them unchanged;
//   - Ext4: mkfs.ext4 on a loop device over the file, files written with
//     their sha256, unmounted, the FUSE file system remounted over the same
//     backend, e2fsck -fn clean, mounted again and every sha256 equal.
//
// Loop devices and mounts are released in t.Cleanup, also on failure.
func RunFUSE(t *testing.T, f Factory) {
	testenv.FUSE(t)
	t.Run("ReadWrite", func(t *testing.T) { fuseReadWrite(t, f) })
	t.Run("Fallocate", func(t *testing.T) { fuseFallocate(t, f) })
	t.Run("Ext4", func(t *testing.T) {
		testenv.Tools(t, "losetup", "mkfs.ext4", "e2fsck", "mount", "umount")
		fuseExt4(t, f)
	})
}

// mountFile mounts b as the file "vol" in a new directory and returns the
// file's path and a function that unmounts it; the unmount runs in
// t.Cleanup too, and only once.
func mountFile(t *testing.T, b Backend) (string, func()) {
	t.Helper()
	dir, err := os.MkdirTemp(t.TempDir(), "fuse")
	if err != nil {
		t.Fatal(err)
	}
	m := &fusefs.Mount{Dir: dir, Files: []fusefs.File{{Name: "vol", Backend: b}}, Logger: slog.New(slog.DiscardHandler)}
	if err := m.Mount(context.Background()); err != nil {
		t.Fatalf("mount: %v", err)
	}
	done := false
	unmount := func() {
		if done {
			return
		}
		done = true
		// A loop device lets go of its file asynchronously after
		// losetup -d: while it has not, the mount is busy.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			err := m.Unmount()
			if err == nil {
				return
			}
			if !errors.Is(err, fusefs.ErrBusy) || time.Now().After(deadline) {
				t.Errorf("unmount %s: %v; detaching lazily", dir, err)
				if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
					t.Errorf("lazy unmount of %s: %v", dir, err)
				}
				return
			}
		}
	}
	t.Cleanup(unmount)
	return filepath.Join(dir, "vol"), unmount
}

func openFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if st, err := f.Stat(); err != nil || st.Size() != Size {
		t.Fatalf("stat %s: size %v, %v, want %d", path, st.Size(), err, Size)
	}
	return f
}

// checkFile reads the whole file through the mount and compares it with
// the model.
func checkFile(t *testing.T, what string, f *os.File, model []byte) {
	t.Helper()
	got := make([]byte, len(model))
	if n, err := f.ReadAt(got, 0); err != nil || n != len(got) {
		t.Fatalf("%s: pread(whole) = %d, %v", what, n, err)
	}
	checkEqual(t, what+" (pread through the mount)", got, model)
}

func fsync(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
}

func fuseReadWrite(t *testing.T, f Factory) {
	model := Initial(Size, 3)
	b := newBackend(t, f, model)
	path, _ := mountFile(t, b)
	file := openFile(t, path)
	checkFile(t, "before any write", file, model)

	r := rand.New(rand.NewPCG(3, 4))
	src := rand.NewChaCha8([32]byte{3})
	for i := range 300 {
		var off, n int64
		switch i % 4 {
		case 0: // inside one 4 KiB block
			off = r.Int64N(Size/4096)*4096 + r.Int64N(4000)
			n = 1 + r.Int64N(4096-off%4096)
		case 1: // across blocks, unaligned at both ends
			off = r.Int64N(Size - 1<<20)
			n = 4096 + r.Int64N(200<<10)
		case 2: // up to the end of the device
			n = 1 + r.Int64N(10000)
			off = Size - n
		default: // aligned
			off = r.Int64N(Size/4096-16) * 4096
			n = (1 + r.Int64N(16)) * 4096
		}
		p := make([]byte, n)
		src.Read(p)
		if c, err := file.WriteAt(p, off); err != nil || c != len(p) {
			t.Fatalf("write %d: pwrite(%d, %d) = %d, %v", i, off, n, c, err)
		}
		copy(model[off:], p)
		// Read a little more than was written: the neighbours must not
		// have changed.
		lo, hi := max(0, off-513), min(Size, off+n+513)
		got := make([]byte, hi-lo)
		if c, err := file.ReadAt(got, lo); err != nil || c != len(got) {
			t.Fatalf("write %d: pread(%d, %d) = %d, %v", i, lo, hi-lo, c, err)
		}
		checkEqual(t, "pread around write "+strconv.Itoa(i), got, model[lo:hi])
		if i%50 == 49 {
			fsync(t, file)
		}
	}
	fsync(t, file)
	checkFile(t, "after the writes", file, model)
	checkBackend(t, "after the writes and fsync", b, model)
}

func fuseFallocate(t *testing.T, f Factory) {
	model := Initial(Size, 4)
	b := newBackend(t, f, model)
	path, _ := mountFile(t, b)
	file := openFile(t, path)
	const (
		punch = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		zero  = unix.FALLOC_FL_ZERO_RANGE
	)
	for _, c := range []struct {
		mode   uint32
		off, n int64
	}{
		{punch, 3*4096 + 100, 10000}, // unaligned at both ends
		{punch, 1 << 20, 1 << 20},    // a whole MiB
		{punch, 2<<20 + 17, 5},       // a few bytes
		{punch, Size - 1000, 5000},   // past the end: KEEP_SIZE ignores it
		{zero, 5<<20 + 4095, 4098},   // three partial blocks
		{zero, 6 << 20, 64 << 10},    // aligned
		{zero | unix.FALLOC_FL_KEEP_SIZE, Size - 4096 - 1, 2},
	} {
		if err := unix.Fallocate(int(file.Fd()), c.mode, c.off, c.n); err != nil {
			t.Fatalf("fallocate(mode %#x, %d, %d): %v", c.mode, c.off, c.n, err)
		}
		end := min(c.off+c.n, Size)
		clear(model[c.off:end])
		lo, hi := max(0, c.off-4096), min(Size, end+4096)
		got := make([]byte, hi-lo)
		if n, err := file.ReadAt(got, lo); err != nil || n != len(got) {
			t.Fatalf("pread(%d, %d) = %d, %v", lo, hi-lo, n, err)
		}
		checkEqual(t, "pread around fallocate", got, model[lo:hi])
	}
	fsync(t, file)
	checkFile(t, "after fallocate", file, model)
	checkBackend(t, "after fallocate and fsync", b, model)
}

// attachLoop attaches a loop device to path and returns it and a function
// that detaches it and waits until it let go of path; it runs in
// t.Cleanup too, and only once.
func attachLoop(t *testing.T, path string) (string, func()) {
	t.Helper()
	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", path))
	done := false
	detach := func() {
		if done {
			return
		}
		done = true
		backing := filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file")
		if out, err := osexec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
			return
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(backing); err != nil {
				return
			}
		}
		t.Errorf("%s still attached 5 s after losetup -d", dev)
	}
	t.Cleanup(detach)
	return dev, detach
}

// mountExt4 mounts dev on a new directory and returns it and a function
// that unmounts it; it runs in t.Cleanup too, and only once.
func mountExt4(t *testing.T, dev string, opts ...string) (string, func()) {
	t.Helper()
	dir, err := os.MkdirTemp(t.TempDir(), "ext4")
	if err != nil {
		t.Fatal(err)
	}
	run(t, "mount", append(append([]string{"-t", "ext4"}, opts...), dev, dir)...)
	done := false
	umount := func() {
		if done {
			return
		}
		done = true
		if out, err := osexec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	}
	t.Cleanup(umount)
	return dir, umount
}

func fuseExt4(t *testing.T, f Factory) {
	// Start from data, not zeros, so that mkfs must really discard or
	// write what ext4 needs to read as zeros.
	b := newBackend(t, f, Initial(Size, 5))
	path, unmountFUSE := mountFile(t, b)
	dev, detach := attachLoop(t, path)
	run(t, "mkfs.ext4", "-q", "-F", dev)
	mnt, umount := mountExt4(t, dev)

	r := rand.New(rand.NewPCG(5, 6))
	src := rand.NewChaCha8([32]byte{5})
	want := map[string][32]byte{}
	for i := range 10 {
		p := make([]byte, 1+r.IntN(2<<20))
		src.Read(p)
		name := "f" + strconv.Itoa(i)
		if err := os.WriteFile(filepath.Join(mnt, name), p, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = sha256.Sum256(p)
	}
	umount()
	detach()
	unmountFUSE()
	if t.Failed() {
		return
	}
	if err := b.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}

	// A new FUSE mount and loop device: nothing below is read from a
	// cache filled before.
	path, _ = mountFile(t, b)
	dev, _ = attachLoop(t, path)
	if out, err := osexec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", dev, err, out)
	}
	mnt, _ = mountExt4(t, dev, "-o", "ro")
	for name, sum := range want {
		p, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := sha256.Sum256(p); got != sum {
			t.Errorf("%s: sha256 after remount %x, written %x", name, got, sum)
		}
	}
	entries, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want)+1 { // and lost+found
		t.Errorf("%d entries in the file system, want %d files and lost+found", len(entries), len(want))
	}
}
