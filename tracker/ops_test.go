package tracker_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

func memVolume(t *testing.T, size int) (*hrltest.CrashFS, *tracker.Volume, []byte) {
	t.Helper()
	fsys := hrltest.New()
	fsys.MkdirAll("/vol", 0o755)
	initial := initialImage(size, 5)
	fsys.WriteFile(backingPath, initial)
	v := newVolume(t, fsys)
	openVolume(t, v)
	return fsys, v, initial
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// replayAll replays every sealed segment onto a copy of initial and
// returns the image.
func replayAll(t *testing.T, fsys hrl.FS, v *tracker.Volume, initial []byte) image {
	t.Helper()
	img := image(append([]byte(nil), initial...))
	replayJournal(t, fsys, v.Segments(), img, nil)
	return img
}

// A full journal disk must not fail the protected server's writes: the
// volume switches to bitmap mode, refuses recovery points until a resync,
// and the resync makes the journal whole again.
func TestJournalFullSwitchesToBitmapMode(t *testing.T) {
	fsys, v, initial := memVolume(t, 1<<20)
	defer v.Close()
	if _, err := v.WriteAt(fill(8192, 1), 0); err != nil {
		t.Fatal(err)
	}
	fsys.FailPath("write", ".hrl", syscall.ENOSPC)
	if _, err := v.WriteAt(fill(4096, 2), 64<<10); err != nil {
		t.Fatalf("write with a full journal disk failed: %v", err)
	}
	st := v.Status()
	if st.Mode != tracker.ModeBitmap || !strings.Contains(st.ModeReason, "no space") || st.Resync == "" {
		t.Fatalf("status = %+v, want bitmap mode naming the cause and a resync", st)
	}
	if _, err := v.WriteAt(fill(4096, 3), 200<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Tag(hrl.TagCrash, "x"); !errors.Is(err, tracker.ErrResync) {
		t.Fatalf("tag in bitmap mode: err = %v, want ErrResync", err)
	}
	for _, off := range []int64{64 << 10, 200 << 10} {
		if !v.Bitmap().IsDirty(off / tracker.DefaultRegionSize) {
			t.Fatalf("region at %d not dirty in bitmap mode", off)
		}
	}
	fsys.ClearFaults()
	var last, total int64
	err := v.Resync(context.Background(), func(d, tot int64) { last, total = d, tot })
	if err != nil && strings.Contains(err.Error(), "run it again") {
		// The sealer may have tried the rolled segment's seal before
		// ClearFaults: that failure is found by this Resync, which asks,
		// as it asks the shipper, to be run again.
		err = v.Resync(context.Background(), func(d, tot int64) { last, total = d, tot })
	}
	if err != nil {
		t.Fatal(err)
	}
	if last != total || total == 0 {
		t.Fatalf("progress %d/%d", last, total)
	}
	seq, err := v.Tag(hrl.TagCrash, "after")
	if err != nil {
		t.Fatal(err)
	}
	st = v.Status()
	if st.Mode != tracker.ModeJournal || st.Resync != "" || st.Generation < 2 {
		t.Fatalf("after resync: %+v", st)
	}
	img := replayAll(t, fsys, v, initial)
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(img, backing) {
		t.Fatalf("replay through tag %d differs from the backing store", seq)
	}
}

// A bit flip inside a sealed segment is corruption: the volume still opens
// (the protected server keeps its disk), moves the journal aside, starts a
// new generation and asks for a resync; nothing is silently skipped.
func TestCorruptJournalIsQuarantined(t *testing.T) {
	fsys, v, _ := memVolume(t, 1<<20)
	for i := range 4 {
		if _, err := v.WriteAt(fill(40<<10, byte(i+1)), int64(i)*(64<<10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Seal(); err != nil {
		t.Fatal(err)
	}
	segs := v.Segments()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	fsys.FlipByte(segs[0].Path, 300)
	v = newVolume(t, fsys)
	openVolume(t, v)
	defer v.Close()
	st := v.Status()
	if !strings.Contains(st.Resync, "journal corrupt") || !strings.Contains(st.Resync, "quarantine") || st.Generation != 2 {
		t.Fatalf("status = %+v, want a resync naming the corruption and the quarantine, generation 2", st)
	}
	if len(v.Segments()) != 0 {
		t.Fatalf("segments still offered: %v", v.Segments())
	}
	names, _ := fsys.ReadDir(filepath.Join(journalDir, "quarantine"))
	if len(names) != 1 {
		t.Fatalf("quarantine dir: %v", names)
	}
	for r := range int64(4) {
		if !v.Bitmap().IsDirty(r) {
			t.Fatalf("region %d written before the corruption is not dirty", r)
		}
	}
	if err := v.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Tag(hrl.TagCrash, "ok"); err != nil {
		t.Fatal(err)
	}
}

func TestConsumerAckOrderAndClear(t *testing.T) {
	fsys, v, _ := memVolume(t, 1<<20)
	defer v.Close()
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	v.WriteAt(fill(4096, 1), 0)
	v.Seal()
	v.WriteAt(fill(4096, 2), 128<<10)
	v.Seal()
	segs := v.Segments()
	if len(segs) != 2 {
		t.Fatalf("segments = %v", segs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	next, err := v.NextSegment(ctx, segs[0].FirstSeq)
	if err != nil || next.FirstSeq != segs[1].FirstSeq {
		t.Fatalf("NextSegment = %+v, %v", next, err)
	}
	if err := v.Ack(segs[1].FirstSeq); !errors.Is(err, tracker.ErrAckOrder) {
		t.Fatalf("ack out of order: %v", err)
	}
	if err := v.Ack(segs[0].FirstSeq); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	// The checkpoint made the acknowledgement durable, then deleted the
	// segment.
	if _, err := fsys.ReadFile(segs[0].Path); err == nil {
		t.Fatal("acknowledged segment still on disk after a checkpoint")
	}
	if v.Bitmap().IsDirty(0) || !v.Bitmap().IsDirty(2) {
		t.Fatalf("after ack+flush: region 0 dirty=%v (want clean), region 2 dirty=%v (want dirty)", v.Bitmap().IsDirty(0), v.Bitmap().IsDirty(2))
	}
	if st := v.Status(); st.AckedSeq != segs[0].LastSeq {
		t.Fatalf("acked seq %d, want %d", st.AckedSeq, segs[0].LastSeq)
	}
}

func TestSegmentsSealByAge(t *testing.T) {
	fsys := hrltest.New()
	fsys.MkdirAll("/vol", 0o755)
	fsys.WriteFile(backingPath, make([]byte, 1<<20))
	v := newVolume(t, fsys)
	v.SegmentAge = 50 * time.Millisecond
	openVolume(t, v)
	defer v.Close()
	v.WriteAt(fill(4096, 9), 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := v.NextSegment(ctx, 0)
	if err != nil || s.Count != 1 || !s.Sealed {
		t.Fatalf("NextSegment = %+v, %v; want a sealed segment with one record", s, err)
	}
}

func TestRequestsOutsideTheVolume(t *testing.T) {
	_, v, _ := memVolume(t, 1<<20)
	defer v.Close()
	for name, err := range map[string]error{
		"write past end": func() error { _, err := v.WriteAt(fill(4096, 1), 1<<20-100); return err }(),
		"negative":       func() error { _, err := v.WriteAt(fill(1, 1), -1); return err }(),
		"zero past end":  v.WriteZeroes(1<<20, 1),
		"trim past end":  v.Trim(0, 1<<20+1),
		"read past end":  func() error { _, err := v.ReadAt(make([]byte, 10), 1<<20-5); return err }(),
	} {
		if !errors.Is(err, tracker.ErrOutOfRange) {
			t.Errorf("%s: err = %v, want ErrOutOfRange", name, err)
		}
	}
}

// On the real file system: a second process cannot open the same journal,
// trims punch holes in the backing file, and a clean close needs no resync.
func TestOSFileSystem(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	jdir := filepath.Join(dir, "journal")
	v := tracker.NewVolume(img, jdir)
	openVolume(t, v)
	second := tracker.NewVolume(img, jdir)
	if err := second.Open(context.Background()); !errors.Is(err, tracker.ErrLocked) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("second open: %v, want ErrLocked naming the holder", err)
	}
	if _, err := v.WriteAt(fill(1<<20, 7), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Stat(img, &st)
	before := st.Blocks
	if err := v.Trim(1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	syscall.Stat(img, &st)
	if st.Blocks >= before {
		t.Errorf("trim did not deallocate: %d blocks before, %d after", before, st.Blocks)
	}
	if _, err := v.Tag(hrl.TagApp, "done"); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v = tracker.NewVolume(img, jdir)
	openVolume(t, v)
	defer v.Close()
	if s := v.Status(); s.Resync != "" || len(v.Segments()) != 1 {
		t.Fatalf("after a clean close: %+v, %d segments", s, len(v.Segments()))
	}
	got := replayAll(t, hrl.OSFS{}, v, make([]byte, 8<<20))
	want, _ := os.ReadFile(img)
	if !bytes.Equal(got, want) {
		t.Fatal("replay differs from the backing file")
	}
}

// A segment that cannot be sealed (its fsync fails) is never offered to the
// consumer; journaling stops until a resync starts a new generation, and the
// journal on disk stays consistent across a restart.
func TestSealFailure(t *testing.T) {
	fsys, v, initial := memVolume(t, 1<<20)
	if _, err := v.WriteAt(fill(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Seal(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(fill(4096, 2), 128<<10); err != nil {
		t.Fatal(err)
	}
	fsys.FailPath("sync", ".hrl", syscall.EIO)
	if err := v.Seal(); err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("seal with a failing fsync: %v", err)
	}
	fsys.ClearFaults()
	if st := v.Status(); st.Mode != tracker.ModeBitmap || st.Resync == "" || len(v.Segments()) != 1 {
		t.Fatalf("after a failed seal: %+v, %d segments offered", st, len(v.Segments()))
	}
	if !v.Bitmap().IsDirty(2) {
		t.Fatal("region of the unsealed segment is not dirty")
	}
	if err := v.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Tag(hrl.TagCrash, "after"); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v = newVolume(t, fsys)
	openVolume(t, v)
	defer v.Close()
	if st := v.Status(); st.Resync != "" || st.Generation != 2 {
		t.Fatalf("after restart: %+v", st)
	}
	img := replayAll(t, fsys, v, initial)
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(img, backing) {
		t.Fatal("replay of both generations differs from the backing store")
	}
}

func TestExtentsShowHolesAfterTrim(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 4<<20)
	v := tracker.NewVolume(img, filepath.Join(dir, "j"))
	v.Logger = quiet
	openVolume(t, v)
	defer v.Close()
	v.WriteAt(fill(2<<20, 5), 1<<20)
	v.Trim(1<<20, 1<<20)
	ext, err := v.Extents(0, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []tracker.Extent{{0, 2 << 20, true}, {2 << 20, 1 << 20, false}, {3 << 20, 1 << 20, true}}
	if len(ext) != len(want) {
		t.Fatalf("extents = %v, want %v", ext, want)
	}
	for i := range want {
		if ext[i] != want[i] {
			t.Fatalf("extents = %v, want %v", ext, want)
		}
	}
}

// On a fragmented file Extents stops early, and asking again from where it
// stopped continues seamlessly to the end.
func TestExtentsStopEarlyOnFragmentedFiles(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	f, _ := os.Create(img)
	f.Truncate(40 << 20)
	for off := int64(0); off < 40<<20; off += 8192 {
		f.WriteAt(fill(4096, 1), off) // data, hole, data, hole, ...
	}
	f.Close()
	v := tracker.NewVolume(img, filepath.Join(dir, "j"))
	v.Logger = quiet
	openVolume(t, v)
	defer v.Close()
	var all []tracker.Extent
	for pos := int64(0); pos < v.Size(); {
		ext, err := v.Extents(pos, v.Size()-pos)
		if err != nil || len(ext) == 0 || len(ext) > 4096 {
			t.Fatalf("Extents(%d): %d extents, %v", pos, len(ext), err)
		}
		for _, e := range ext {
			if e.Offset != pos {
				t.Fatalf("extent at %d, want %d", e.Offset, pos)
			}
			pos += e.Length
		}
		all = append(all, ext...)
	}
	if len(all) != 10240 || all[0].Hole || !all[1].Hole {
		t.Fatalf("%d extents (first hole=%v), want 10240 alternating from data", len(all), all[0].Hole)
	}
}

// ClearDelay (md's write-intent bitmap rule): a region acknowledged less
// than ClearDelay ago keeps its bit through a checkpoint, so writing it
// again needs no bitmap sync (here: a bitmap that cannot sync); once the
// delay has passed since its last acknowledgement, the next checkpoint
// clears it; Close clears every acknowledged region at once.
func TestClearDelay(t *testing.T) {
	const delay = 200 * time.Millisecond
	fsys, v, _ := memVolumeWith(t, 1<<20, func(v *tracker.Volume) { v.ClearDelay = delay })
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	write, _, _ := hotHelpers(t, v)
	ack := func() { write(-1) } // seal and acknowledge every segment
	v.WriteAt(fill(4096, 1), 0)
	ack()
	acked := time.Now()
	if err := v.Flush(); err != nil { // a checkpoint, before the delay
		t.Fatal(err)
	}
	if time.Since(acked) < delay && !v.Bitmap().IsDirty(0) {
		t.Fatal("a region acknowledged just now was cleared before ClearDelay")
	}
	noSync := errors.New("the dirty bitmap was synced")
	fsys.FailPath("sync", "dirty.bitmap", noSync)
	if time.Since(acked) < delay {
		if _, err := v.WriteAt(fill(4096, 2), 4096); err != nil {
			t.Fatalf("writing a region whose bit is still set synced the bitmap: %v", err)
		}
	}
	fsys.ClearFaults()
	ack()
	time.Sleep(delay) // at least the delay since the last acknowledgement
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if v.Bitmap().IsDirty(0) {
		t.Fatal("a region idle for longer than ClearDelay after its acknowledgement is still dirty after a checkpoint")
	}
	v.WriteAt(fill(4096, 3), 128<<10) // region 2
	ack()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if v.Bitmap().IsDirty(2) {
		t.Fatal("Close left an acknowledged region dirty")
	}
}
