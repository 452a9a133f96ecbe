package fusefs_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"lifeboat/fusefs"
	"lifeboat/hrl"
)

// image is an in-memory copy of the initial volume (all zeros) that the
// journal is replayed onto.
type image []byte

func (m image) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
func (m image) Zero(off, n int64, _ bool) error          { clear(m[off : off+n]); return nil }

// TestLoopExt4 attaches a loop device to a volume file, makes and uses an
// ext4 file system on it, trims it, and checks the file system, then that
// the journal replayed onto the initial image gives the backing file, and
// that the trim reached the journal as ZERO records with the trim flag.
func TestLoopExt4(t *testing.T) {
	requireFUSE(t, "losetup", "mkfs.ext4", "e2fsck", "fstrim", "mount", "umount")
	const size = 256 << 20
	v, backing := openVolume(t, size)
	m, dir := mountFiles(t, fusefs.File{Name: "vol", Backend: v})

	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", filepath.Join(dir, "vol")))
	t.Cleanup(func() { detachLoop(t, dev) })
	run(t, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(t.TempDir(), "ext4")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "ext4", dev, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	})

	r := rand.New(rand.NewPCG(1, 2))
	src := rand.NewChaCha8([32]byte{3})
	want := map[string][]byte{}
	for i := range 12 {
		p := make([]byte, 64<<10+r.IntN(1<<20))
		src.Read(p)
		name := filepath.Join(mnt, "f"+strconv.Itoa(i))
		if err := os.WriteFile(name, p, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = p
	}
	run(t, "sync")
	for i := 0; i < 12; i += 2 {
		name := filepath.Join(mnt, "f"+strconv.Itoa(i))
		if err := os.Remove(name); err != nil {
			t.Fatal(err)
		}
		delete(want, name)
	}
	run(t, "sync")
	beforeTrim := v.Status().NextSeq
	out := run(t, "fstrim", "-v", mnt)
	afterTrim := v.Status().NextSeq
	if m := regexp.MustCompile(`\((\d+) bytes\) trimmed`).FindStringSubmatch(out); m == nil || m[1] == "0" {
		t.Errorf("fstrim trimmed nothing: %s", out)
	}
	// Drop the caches so the files are read back through the mount.
	run(t, "umount", mnt)
	run(t, "mount", "-t", "ext4", "-o", "ro", dev, mnt)
	for name, p := range want {
		if got, err := os.ReadFile(name); err != nil || !bytes.Equal(got, p) {
			t.Errorf("%s after remount: err %v, content equal %v", name, err, bytes.Equal(got, p))
		}
	}
	run(t, "umount", mnt)
	mounted = false
	if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", dev, err, out)
	}
	detachLoop(t, dev)
	unmount(t, m)
	if err := v.Close(); err != nil {
		t.Fatalf("close volume: %v", err)
	}

	img := make(image, size)
	journal := filepath.Join(filepath.Dir(backing), "journal")
	trims, mkfsTrims := replayAll(t, journal, img, beforeTrim, afterTrim)
	if trims == 0 {
		t.Errorf("no ZERO record with the trim flag among seqs [%d, %d) written during fstrim", beforeTrim, afterTrim)
	}
	t.Logf("fstrim: %s; %d trim records during fstrim, %d before (mkfs discard)", strings.TrimSpace(out), trims, mkfsTrims)
	f, err := os.Open(backing)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	if got, want := sha256.Sum256(img), [32]byte(h.Sum(nil)); got != want {
		t.Errorf("replayed journal sha256 %x, backing file %x", got, want)
	}
}

// replayAll replays every segment in dir onto img in order and counts the
// ZERO records with the trim flag whose seq is in [from, to), and before.
func replayAll(t *testing.T, dir string, img image, from, to uint64) (inRange, before int) {
	t.Helper()
	seqs, err := hrl.ListSegments(hrl.OSFS{}, dir)
	if err != nil || len(seqs) == 0 {
		t.Fatalf("journal segments in %s: %v, %v", dir, seqs, err)
	}
	for _, s := range seqs {
		path := filepath.Join(dir, hrl.SegmentName(s))
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		info, err := hrl.Replay(f, st.Size(), path, img, nil)
		if err != nil || !info.Sealed {
			t.Fatalf("replay %s: %v (sealed %v)", path, err, info.Sealed)
		}
		rd, err := hrl.NewReader(f, st.Size(), path)
		if err != nil {
			t.Fatal(err)
		}
		for {
			rec, err := rd.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("read %s: %v", path, err)
			}
			if rec.Type != hrl.TypeZero || rec.Flags&hrl.FlagTrim == 0 {
				continue
			}
			switch {
			case rec.Seq >= from && rec.Seq < to:
				inRange++
			case rec.Seq < from:
				before++
			}
		}
		f.Close()
	}
	return inRange, before
}

// detachLoop detaches a loop device and waits until it let go of its
// backing file; detaching twice is harmless.
func detachLoop(t testing.TB, dev string) {
	t.Helper()
	backingFile := filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file")
	if _, err := os.Stat(backingFile); err != nil {
		return // already detached
	}
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(backingFile); err != nil {
			return
		}
	}
	t.Errorf("%s still attached 5 s after losetup -d", dev)
}
