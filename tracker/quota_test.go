package tracker_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// When the consumer falls behind, the journal stops growing at the quota:
// the volume switches to bitmap mode and writes go on. Once the consumer
// has caught up, a resync copies only the regions written meanwhile, under
// the quota, in a new generation, and the replica equals the volume again.
func TestJournalQuotaSwitchesToBitmapModeAndResyncsDirtyRegions(t *testing.T) {
	const (
		size  = 4 << 20
		quota = 256 << 10
		chunk = 64 << 10 // one region per write
	)
	fsys, v, initial := memVolumeWith(t, size, func(v *tracker.Volume) { v.JournalQuota = quota })
	defer v.Close()
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	model := append([]byte(nil), initial...)
	write := func(off int64) {
		t.Helper()
		p := make([]byte, chunk)
		randomBytes(r, p)
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
		copy(model[off:], p)
		if st := v.Status(); st.JournalBytes > quota {
			t.Fatalf("journal holds %d bytes, quota %d", st.JournalBytes, quota)
		}
	}
	// The first half of the volume until the quota is reached.
	unjournaled := map[int64]bool{} // regions written without the journal
	for off := int64(0); off < size/2; off += chunk {
		write(off)
		if v.Status().Mode == tracker.ModeBitmap {
			unjournaled[off/chunk] = true
			break
		}
	}
	st := v.Status()
	if st.Mode != tracker.ModeBitmap || !strings.Contains(st.ModeReason, tracker.ErrJournalQuota.Error()) ||
		!strings.Contains(st.ModeReason, "resync") || !strings.Contains(st.Resync, tracker.ErrJournalQuota.Error()) {
		t.Fatalf("after the quota: %+v, want bitmap mode naming the quota and a resync", st)
	}
	if _, err := v.Tag(hrl.TagCrash, "x"); !errors.Is(err, tracker.ErrResync) {
		t.Fatalf("tag in bitmap mode: %v, want ErrResync", err)
	}
	// Writes go on in the second half, beyond the quota; they land in the
	// backing file and their regions are dirty.
	for off := int64(size / 2); off < size/2+1<<20; off += 2 * chunk {
		write(off)
		unjournaled[off/chunk] = true
	}
	// Regions whose earlier changes wait in unacknowledged segments: their
	// acknowledgement must not clear them now.
	for _, off := range []int64{0, 2 * chunk} {
		write(off)
		unjournaled[off/chunk] = true
	}
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(backing, model) {
		t.Fatal("backing store differs from what was written")
	}
	for reg := range unjournaled {
		if !v.Bitmap().IsDirty(reg) {
			t.Fatalf("region %d written in bitmap mode is not dirty", reg)
		}
	}

	// The consumer catches up with generation 1; regions whose changes it
	// acknowledged turn clean, the ones written without the journal stay.
	c := startConsumer(t, fsys, v, image(append([]byte(nil), initial...)))
	if err := v.Flush(); err != nil { // every rolled segment sealed: in Segments
		t.Fatal(err)
	}
	if segs := v.Segments(); len(segs) > 0 {
		c.waitAcked(segs[len(segs)-1].LastSeq)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	st = v.Status()
	if st.DirtyRegions != int64(len(unjournaled)) {
		t.Fatalf("%d dirty regions after the consumer caught up, want the %d written without the journal", st.DirtyRegions, len(unjournaled))
	}
	dirty := st.DirtyRegions * st.RegionSize
	var done, total int64
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Resync(ctx, func(d, tot int64) { done, total = d, tot }); err != nil {
		t.Fatal(err)
	}
	if done != total || total != dirty {
		t.Fatalf("progress %d of %d, want %d of %d", done, total, dirty, dirty)
	}
	seq, err := v.Tag(hrl.TagCrash, "after-resync")
	if err != nil {
		t.Fatal(err)
	}
	c.waitAcked(seq)
	st = v.Status()
	if st.Mode != tracker.ModeJournal || st.Resync != "" || st.Generation != 2 {
		t.Fatalf("after the resync: %+v, want journal mode in generation 2", st)
	}
	// Only the dirty regions were copied (random content: no zero or
	// duplicate blocks), and never more than the quota was waiting.
	g2 := c.stats(2)
	if got := g2.payload[hrl.TypeResync]; got != dirty || dirty <= quota {
		t.Fatalf("resync journaled %d bytes, want the %d bytes of the dirty regions (more than the %d quota)", got, dirty, quota)
	}
	if m := c.maxJournalBytes(); m > quota {
		t.Fatalf("journal reached %d bytes, quota %d", m, quota)
	}
	backing, _ = fsys.ReadFile(backingPath)
	if !bytes.Equal(c.image(), backing) {
		t.Fatal("replica after the resync differs from the backing store")
	}
	if n := tracker.PinnedRegions(v); n != 0 {
		t.Fatalf("%d regions still pinned after a complete resync", n)
	}
}

// A quota smaller than one resync chunk makes the resync use smaller
// records rather than wait for room that can never exist.
func TestResyncUnderQuotaSmallerThanAChunk(t *testing.T) {
	const quota = 128 << 10
	fsys, v, _ := memVolumeWith(t, 2<<20+512, func(v *tracker.Volume) {
		v.JournalQuota = quota
		v.InitialSync = true
	})
	defer v.Close()
	c := startConsumer(t, fsys, v, make(image, v.Size()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	seq, err := v.Tag(hrl.TagCrash, "synced")
	if err != nil {
		t.Fatal(err)
	}
	c.waitAcked(seq)
	g := c.stats(1)
	if g.maxResync == 0 || g.maxResync > quota-2*hrl.HeaderSize {
		t.Fatalf("largest RESYNC record %d bytes, want some below the %d quota", g.maxResync, quota)
	}
	if m := c.maxJournalBytes(); m > quota {
		t.Fatalf("journal reached %d bytes, quota %d", m, quota)
	}
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(c.image(), backing) {
		t.Fatal("replica differs from the backing store")
	}
}

// A resync waiting for acknowledgements stops when its context is done; a
// write that exceeds the quota meanwhile switches to bitmap mode and the
// resync fails asking to be run again; with a consumer it completes.
func TestResyncWaitingForQuota(t *testing.T) {
	const quota = 128 << 10
	fsys, v, _ := memVolumeWith(t, 2<<20, func(v *tracker.Volume) {
		v.JournalQuota = quota
		v.InitialSync = true
	})
	defer v.Close()
	recv := func(errc chan error) error {
		t.Helper()
		select {
		case err := <-errc:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("resync did not return")
			return nil
		}
	}
	// Without a consumer the resync fills the journal up to the quota, then
	// waits for acknowledgements.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- v.Resync(ctx, nil) }()
	deadline := time.Now().Add(20 * time.Second)
	for st := v.Status(); st.Sealed == 0 || st.JournalBytes < quota/2; st = v.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("resync did not fill the journal: %+v", st)
		}
		select {
		case err := <-errc:
			t.Fatalf("resync returned without a consumer: %v", err)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := recv(errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled resync: %v, want context.Canceled", err)
	}
	if st := v.Status(); st.Mode != tracker.ModeJournal || st.Resync == "" || st.JournalBytes > quota {
		t.Fatalf("after a cancelled resync: %+v", st)
	}

	// Run again: one acknowledgement lets it journal a chunk (it is
	// running), then a write takes the journal beyond the quota.
	progressed := make(chan struct{}, 1)
	go func() {
		errc <- v.Resync(context.Background(), func(int64, int64) {
			select {
			case progressed <- struct{}{}:
			default:
			}
		})
	}()
	replica := make(image, v.Size())
	first := v.Segments()[0]
	if err := replayInto(v, first, replica, first.LastSeq); err != nil {
		t.Fatal(err)
	}
	if err := v.Ack(first.FirstSeq); err != nil {
		t.Fatal(err)
	}
	select {
	case <-progressed:
	case err := <-errc:
		t.Fatalf("resync returned without a consumer: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("resync did not go on after an acknowledgement")
	}
	if _, err := v.WriteAt(fill(64<<10, 7), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := recv(errc); err == nil || !strings.Contains(err.Error(), "run it again") {
		t.Fatalf("resync after a write beyond the quota: %v, want a request to run it again", err)
	}
	if st := v.Status(); st.Mode != tracker.ModeBitmap || !strings.Contains(st.ModeReason, tracker.ErrJournalQuota.Error()) {
		t.Fatalf("after a write beyond the quota: %+v, want bitmap mode", st)
	}

	c := startConsumer(t, fsys, v, replica)
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	finish(t, fsys, v, c, "synced")
}

func TestJournalQuotaIsValidated(t *testing.T) {
	for _, q := range []int64{-1, 1, tracker.MinJournalQuota - 1} {
		fsys := hrltest.New()
		fsys.MkdirAll("/vol", 0o755)
		fsys.WriteFile(backingPath, make([]byte, 1<<20))
		v := newVolume(t, fsys)
		v.JournalQuota = q
		if err := v.Open(context.Background()); err == nil || !strings.Contains(err.Error(), "journal quota") {
			v.Close()
			t.Errorf("quota %d: open = %v, want an error naming the quota", q, err)
		}
	}
}

// memVolumeWith is memVolume with settings applied before Open.
func memVolumeWith(t *testing.T, size int, set func(*tracker.Volume)) (*hrltest.CrashFS, *tracker.Volume, []byte) {
	t.Helper()
	fsys := hrltest.New()
	fsys.MkdirAll("/vol", 0o755)
	initial := initialImage(size, 5)
	fsys.WriteFile(backingPath, initial)
	v := newVolume(t, fsys)
	set(v)
	openVolume(t, v)
	return fsys, v, initial
}

// Regions the consumer has acknowledged are not resynced again, even when
// the switch to bitmap mode comes before the checkpoint that clears their
// dirty bits.
func TestResyncSkipsAcknowledgedRegionsBeforeTheirCheckpoint(t *testing.T) {
	const (
		size  = 4 << 20
		quota = 256 << 10
		chunk = 64 << 10
	)
	fsys, v, initial := memVolumeWith(t, size, func(v *tracker.Volume) {
		v.JournalQuota = quota
		v.CheckpointInterval = 0 // no checkpoint unless asked for
	})
	defer v.Close()
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	c := startConsumer(t, fsys, v, image(append([]byte(nil), initial...)))
	r := rand.New(rand.NewPCG(7, 8))
	for _, off := range []int64{0, 2 * chunk, 4 * chunk} {
		p := make([]byte, chunk)
		randomBytes(r, p)
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Seal(); err != nil {
		t.Fatal(err)
	}
	// The last seq from the status: the consumer may have acknowledged
	// (and so removed) the sealed segment already.
	c.waitAcked(v.Status().NextSeq - 1)
	if d := v.Status().DirtyRegions; d != 3 {
		t.Fatalf("%d dirty regions before the checkpoint, want the 3 acknowledged ones still marked", d)
	}
	// One write larger than the quota: bitmap mode, its 8 regions dirty.
	big := make([]byte, 2*quota)
	randomBytes(r, big)
	if _, err := v.WriteAt(big, 1<<20); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Mode != tracker.ModeBitmap {
		t.Fatalf("after a write larger than the quota: %+v", st)
	}
	var total int64
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Resync(ctx, func(_, tot int64) { total = tot }); err != nil {
		t.Fatal(err)
	}
	if total != 2*quota {
		t.Fatalf("resync walked %d bytes, want only the %d written in bitmap mode", total, 2*quota)
	}
	seq, err := v.Tag(hrl.TagCrash, "after")
	if err != nil {
		t.Fatal(err)
	}
	c.waitAcked(seq)
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(c.image(), backing) {
		t.Fatal("replica differs from the backing store")
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if d := v.Status().DirtyRegions; d != 0 {
		t.Fatalf("%d dirty regions after the checkpoint", d)
	}
}

// ResyncAll makes every region dirty and pinned, even ones acknowledged:
// the next resync copies the whole volume in a new generation, and the
// journal written before it ends at the seq ResyncAll returns.
func TestResyncAllCopiesEveryRegion(t *testing.T) {
	const size = 1 << 20
	fsys, v, initial := memVolumeWith(t, size, func(v *tracker.Volume) {})
	defer v.Close()
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	c := startConsumer(t, fsys, v, image(append([]byte(nil), initial...)))
	p := make([]byte, 64<<10)
	randomBytes(rand.New(rand.NewPCG(9, 9)), p)
	if _, err := v.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	seq, err := v.Tag(hrl.TagCrash, "before")
	if err != nil {
		t.Fatal(err)
	}
	c.waitAcked(seq)
	last, err := v.ResyncAll("test: replica lost")
	if err != nil {
		t.Fatal(err)
	}
	st := v.Status()
	if last != seq || st.Mode != tracker.ModeBitmap || st.DirtyRegions != st.Regions || !strings.Contains(st.Resync, "replica lost") {
		t.Fatalf("after ResyncAll: last %d (tag %d), %+v", last, seq, st)
	}
	var total int64
	if err := v.Resync(context.Background(), func(_, tot int64) { total = tot }); err != nil {
		t.Fatal(err)
	}
	if total != size || v.Status().Generation != 2 {
		t.Fatalf("resync walked %d of %d bytes in generation %d", total, size, v.Status().Generation)
	}
}
