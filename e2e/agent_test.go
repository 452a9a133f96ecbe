package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/internal/testenv"
	"lifeboat/tracker"
)

// zeroImage replays a volume's journal onto an all-zero image of size
// bytes (the volumes here start as sparse files) and returns it.
type zeroImage []byte

func (m zeroImage) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
func (m zeroImage) Zero(off, n int64, _ bool) error          { clear(m[off : off+n]); return nil }

// openJournal opens the volume in-process, as a restarted agent would.
func openJournal(t *testing.T, img, jdir string) *tracker.Volume {
	t.Helper()
	v := tracker.NewVolume(img, jdir)
	v.Logger = slog.New(slog.DiscardHandler)
	if err := v.Open(context.Background()); err != nil {
		t.Fatalf("reopen the journal: %v", err)
	}
	return v
}

func replay(t *testing.T, v *tracker.Volume) zeroImage {
	t.Helper()
	img := make(zeroImage, v.Size())
	for _, s := range v.Segments() {
		f, err := os.Open(s.Path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hrl.Replay(f, s.Size, s.Path, img, nil); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return img
}

// SIGTERM drains, flushes and seals: the journal verifies, replays to the
// backing file's bytes, and the next open needs no resync.
func TestAgentStopsCleanlyOnSIGTERM(t *testing.T) {
	need(t, "qemu-io", "nbdcopy")
	dir := t.TempDir()
	img, jroot := filepath.Join(dir, "disk.img"), filepath.Join(dir, "journal")
	a := startAgent(t, "--volume", "disk="+img+",size=64MiB", "--journal-dir", jroot)
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(i*7 + i/4096)
	}
	os.WriteFile(src, data, 0o644)
	run(t, "nbdcopy", "--flush", src, a.uri["disk"])
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 20M 1M", "-c", "discard 4M 2M", "-c", "write -z 8M 1M", a.uri["disk"])
	if err := a.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, a.Output())
	}
	if !strings.Contains(a.Output(), "stopped cleanly") {
		t.Fatalf("no clean stop message:\n%s", a.Output())
	}
	jdir := filepath.Join(jroot, "disk")
	if out, err := exec.Command(binary, "journal", "verify", jdir).CombinedOutput(); err != nil {
		t.Fatalf("journal verify after SIGTERM: %v\n%s", err, out)
	}
	v := openJournal(t, img, jdir)
	defer v.Close()
	if st := v.Status(); st.Resync != "" {
		t.Fatalf("after a clean stop the volume asks for a resync: %s", st.Resync)
	}
	backing, _ := os.ReadFile(img)
	if got := replay(t, v); sha256.Sum256(got) != sha256.Sum256(backing) {
		t.Fatal("journal replay differs from the backing file")
	}
	if !bytes.Equal(backing[20<<20:21<<20], bytes.Repeat([]byte{0x5a}, 1<<20)) {
		t.Fatal("the qemu-io write is not in the backing file")
	}
}

// A second agent on the same journal directory is refused, naming the
// holder, and the first keeps serving.
func TestSecondAgentRefused(t *testing.T) {
	need(t, "qemu-io")
	dir := t.TempDir()
	vol := "--volume=disk=" + filepath.Join(dir, "disk.img") + ",size=8MiB"
	a := startAgent(t, vol, "--journal-dir", filepath.Join(dir, "j"))
	_, err := tryAgent(t, vol, "--journal-dir", filepath.Join(dir, "j"))
	if err == nil || !strings.Contains(err.Error(), "locked by pid") || !strings.Contains(err.Error(), "stop that agent first") {
		t.Fatalf("second agent: %v", err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 1 0 64k", "-c", "read -P 1 0 64k", a.uri["disk"])
	if err := a.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// kill -9 during a fio run: the journal reopens cleanly (a torn tail is no
// error, nothing is quarantined), and a write acknowledged before a
// completed FLUSH is in the backing file and in the journal.
func TestKill9DuringFio(t *testing.T) {
	need(t, "fio", "qemu-io")
	dir := t.TempDir()
	img, jroot := filepath.Join(dir, "disk.img"), filepath.Join(dir, "journal")
	a := startAgent(t, "--volume", "disk="+img+",size=256MiB", "--journal-dir", jroot, "--segment-age", "200ms")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=churn", "--ioengine=nbd", "--uri="+a.uri["disk"],
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64M", "--time_based", "--runtime=60", "--fsync=64")
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { fio.Process.Kill(); fio.Wait() }()
	time.Sleep(2 * time.Second)
	// Acknowledged and flushed while fio keeps writing elsewhere.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xc3 128M 4M", "-c", "flush", a.uri["disk"])
	time.Sleep(time.Second)
	if err := a.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent survived SIGKILL?")
	}
	fio.Process.Kill()
	fio.Wait()

	jdir := filepath.Join(jroot, "disk")
	v := openJournal(t, img, jdir)
	defer v.Close()
	st := v.Status()
	if st.Generation != 1 || !strings.Contains(st.Resync, "unclean shutdown") {
		t.Fatalf("after kill -9: %+v (want generation 1, nothing quarantined, a resync asked for the unclean shutdown)", st)
	}
	var records uint64
	for _, s := range v.Segments() {
		records += s.Count
	}
	if records < 1000 {
		t.Fatalf("only %d records journaled: fio did not run?\n%s", records, fioOut.String())
	}
	t.Logf("%d records journaled before the kill", records)
	want := bytes.Repeat([]byte{0xc3}, 4<<20)
	backing, _ := os.ReadFile(img)
	if !bytes.Equal(backing[128<<20:132<<20], want) {
		t.Fatal("flushed write missing from the backing file")
	}
	if got := replay(t, v); !bytes.Equal(got[128<<20:132<<20], want) {
		t.Fatal("flushed write missing from the journal")
	}
	// And the restarted agent serves again.
	v.Close()
	a2 := startAgent(t, "--volume", "disk="+img, "--journal-dir", jroot)
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0xc3 128M 4M", a2.uri["disk"])
	if err := a2.stop(t, syscall.SIGTERM); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		t.Fatalf("restarted agent: %v\n%s", err, a2.Output())
	}
}

// With --fuse-mount, SIGTERM unmounts: the volume file is gone from the
// mount point and the journal is sealed.
func TestAgentFuseMountStopsCleanly(t *testing.T) {
	testenv.FUSE(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	img, jroot := filepath.Join(dir, "disk.img"), filepath.Join(dir, "journal")
	a := startAgent(t, "--nbd", "", "--fuse-mount", mnt, "--volume", "disk="+img+",size=16MiB", "--journal-dir", jroot)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	f, err := os.OpenFile(a.uri["disk"], os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open the FUSE file: %v\n%s", err, a.Output())
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x7e}, 1<<20), 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := a.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, a.Output())
	}
	if _, err := os.Stat(a.uri["disk"]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after SIGTERM the mount still shows the volume: %v", err)
	}
	v := openJournal(t, img, filepath.Join(jroot, "disk"))
	defer v.Close()
	if v.Status().Resync != "" {
		t.Fatal("unclean stop")
	}
	if got := replay(t, v); !bytes.Equal(got[3<<20:4<<20], bytes.Repeat([]byte{0x7e}, 1<<20)) {
		t.Fatal("the write through the FUSE file is not in the journal")
	}
}
