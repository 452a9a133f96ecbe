package fusefs_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/fusefs"
)

// mountDynamic mounts a Dynamic mount with files (maybe none).
func mountDynamic(t *testing.T, files ...fusefs.File) (*fusefs.Mount, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &fusefs.Mount{Dir: dir, Files: files, Dynamic: true, Logger: quiet}
	if err := m.Mount(context.Background()); err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { unmount(t, m) })
	return m, dir
}

// ls lists dir with ls(1), as a user would.
func ls(t *testing.T, dir string) []string {
	t.Helper()
	return strings.Fields(run(t, "ls", "-1", dir))
}

// calls is how many backend calls f has seen, reads included.
func (f *fakeBackend) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// removeWhenReleased calls RemoveFile until the kernel has released the
// file's last handle: after close(2) or losetup -d, the release reaches
// the mount asynchronously. Only ErrBusy is retried.
func removeWhenReleased(t *testing.T, m *fusefs.Mount, name string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := m.RemoveFile(name)
		if err == nil {
			return
		}
		if !errors.Is(err, fusefs.ErrBusy) || time.Now().After(deadline) {
			t.Fatalf("RemoveFile(%q): %v", name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAddFileWhileMounted(t *testing.T) {
	requireFUSE(t, "ls")
	m, dir := mountDynamic(t)
	if got := ls(t, dir); len(got) != 0 {
		t.Fatalf("a new dynamic mount lists %q", got)
	}
	// The kernel may remember that "vol" does not exist.
	if _, err := os.Stat(filepath.Join(dir, "vol")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat before AddFile: %v", err)
	}
	b := newFake(1 << 20)
	if err := m.AddFile(fusefs.File{Name: "vol", Backend: b}); err != nil {
		t.Fatal(err)
	}
	if err := m.AddFile(fusefs.File{Name: "ro", Backend: newFake(4096), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if got := ls(t, dir); !slices.Equal(got, []string{"ro", "vol"}) {
		t.Fatalf("ls after AddFile: %q", got)
	}
	if got := m.FileNames(); !slices.Equal(got, []string{"vol", "ro"}) {
		t.Fatalf("FileNames: %q", got)
	}
	f, err := os.OpenFile(filepath.Join(dir, "vol"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := bytes.Repeat([]byte{0xa5}, 64<<10)
	if _, err := f.WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := f.ReadAt(got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, p))
	}
	if st, err := f.Stat(); err != nil || st.Size() != 1<<20 {
		t.Fatalf("stat: %v, %v", st, err)
	}
	if _, err := os.OpenFile(filepath.Join(dir, "ro"), os.O_RDWR, 0); !errors.Is(err, os.ErrPermission) && !errors.Is(err, syscall.EROFS) {
		t.Errorf("open the read-only file for writing: %v", err)
	}
	if err := m.AddFile(fusefs.File{Name: "vol", Backend: newFake(4096)}); !errors.Is(err, fusefs.ErrConfig) || !strings.Contains(err.Error(), `"vol"`) {
		t.Errorf("AddFile of a name in use: %v, want ErrConfig naming it", err)
	}
}

// A loop device over a file keeps it: RemoveFile says ErrBusy. After
// losetup -d it is removed, gone from ls, and its backend gets no more
// calls.
func TestRemoveFileWithLoopDevice(t *testing.T) {
	requireFUSE(t, "losetup", "ls")
	b, other := newFake(4<<20), newFake(1<<20)
	m, dir := mountDynamic(t, fusefs.File{Name: "vol", Backend: b}, fusefs.File{Name: "other", Backend: other})
	path := filepath.Join(dir, "vol")
	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", path))
	t.Cleanup(func() { detachLoop(t, dev) })
	run(t, "dd", "if=/dev/zero", "of="+dev, "bs=64k", "count=4", "oflag=direct", "status=none")

	err := m.RemoveFile("vol")
	if !errors.Is(err, fusefs.ErrBusy) || !strings.Contains(err.Error(), "losetup -d") {
		t.Fatalf("RemoveFile with a loop device attached: %v, want ErrBusy", err)
	}
	if got := ls(t, dir); !slices.Contains(got, "vol") {
		t.Fatalf("ls after a refused RemoveFile: %q", got)
	}
	run(t, "dd", "if="+dev, "of=/dev/null", "bs=64k", "count=4", "iflag=direct", "status=none")

	detachLoop(t, dev)
	removeWhenReleased(t, m, "vol")
	calls := b.callCount()
	if got := ls(t, dir); !slices.Equal(got, []string{"other"}) {
		t.Fatalf("ls after RemoveFile: %q, want [other]", got)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of the removed file: %v, want ENOENT", err)
	}
	if _, err := os.OpenFile(path, os.O_RDWR, 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("open of the removed file: %v, want ENOENT", err)
	}
	if out, err := exec.Command("losetup", "-f", "--show", path).CombinedOutput(); err == nil {
		detachLoop(t, strings.TrimSpace(string(out)))
		t.Error("losetup over the removed file succeeded")
	}
	if got := b.callCount(); got != calls {
		t.Errorf("backend called %d times after RemoveFile returned", got-calls)
	}
	if got := readAll(t, filepath.Join(dir, "other")); len(got) != 1<<20 {
		t.Errorf("the other file reads %d bytes", len(got))
	}
	if err := m.RemoveFile("vol"); !errors.Is(err, fusefs.ErrNoSuchFile) {
		t.Errorf("second RemoveFile: %v, want ErrNoSuchFile", err)
	}
	// The name can be used again, with a new backend.
	nb := newFake(8192)
	if err := m.AddFile(fusefs.File{Name: "vol", Backend: nb}); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, path); len(got) != 8192 {
		t.Fatalf("the re-added file reads %d bytes, want the new backend's 8192", len(got))
	}
	if got := b.callCount(); got != calls {
		t.Errorf("old backend called %d times after the name was reused", got-calls)
	}
}

// A file held open by a process is busy too; closed, it can be removed.
func TestRemoveFileOpen(t *testing.T) {
	requireFUSE(t)
	m, dir := mountDynamic(t, fusefs.File{Name: "vol", Backend: newFake(4096)})
	f, err := os.Open(filepath.Join(dir, "vol"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveFile("vol"); !errors.Is(err, fusefs.ErrBusy) {
		t.Fatalf("RemoveFile of an open file: %v, want ErrBusy", err)
	}
	f.Close()
	removeWhenReleased(t, m, "vol")
	if names := m.FileNames(); len(names) != 0 {
		t.Fatalf("FileNames after RemoveFile: %q", names)
	}
	// Unmount is not held up by the removed file.
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
}

func TestFilesBeforeMount(t *testing.T) {
	requireFUSE(t, "ls")
	dir := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &fusefs.Mount{Dir: dir, Files: []fusefs.File{{Name: "a", Backend: newFake(4096)}}, Logger: quiet}
	if err := m.RemoveFile("nope"); !errors.Is(err, fusefs.ErrNoSuchFile) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("RemoveFile of an unknown name: %v, want ErrNoSuchFile naming it", err)
	}
	if err := m.AddFile(fusefs.File{Name: "b", Backend: newFake(8192)}); err != nil {
		t.Fatal(err)
	}
	if err := m.AddFile(fusefs.File{Name: "c", Backend: newFake(512)}); err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveFile("c"); err != nil {
		t.Fatal(err)
	}
	if err := m.Mount(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, m) })
	if got := ls(t, dir); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("ls: %q, want [a b]", got)
	}
	if got := readAll(t, filepath.Join(dir, "b")); len(got) != 8192 {
		t.Fatalf("b reads %d bytes", len(got))
	}
}

func TestDynamicMountConfig(t *testing.T) {
	// Without Dynamic, no files is still a configuration error; with it, a
	// bad file is one all the same.
	if err := (&fusefs.Mount{Dir: "/x"}).Mount(context.Background()); !errors.Is(err, fusefs.ErrConfig) {
		t.Fatalf("Mount without files: %v, want ErrConfig", err)
	}
	m := &fusefs.Mount{Dir: "/x", Dynamic: true, Files: []fusefs.File{{Name: "a/b", Backend: newFake(1)}}}
	if err := m.Mount(context.Background()); !errors.Is(err, fusefs.ErrConfig) {
		t.Fatalf("Mount with a bad name: %v, want ErrConfig", err)
	}
	if err := m.AddFile(fusefs.File{Name: "ok", Backend: newFake(1)}); !errors.Is(err, fusefs.ErrConfig) {
		t.Fatalf("AddFile on a mount with a bad file: %v, want ErrConfig", err)
	}
	for _, f := range []fusefs.File{{Name: "", Backend: newFake(1)}, {Name: ".."}, {Name: "x"}} {
		if err := (&fusefs.Mount{Dir: "/x", Dynamic: true}).AddFile(f); !errors.Is(err, fusefs.ErrConfig) {
			t.Errorf("AddFile(%+v): %v, want ErrConfig", f, err)
		}
	}
}
