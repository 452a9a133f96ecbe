package tracker_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// A reprotect: the journal so far is dropped (acknowledged unshipped), the
// named ranges are resynced in a new generation, and blocks the consumer
// already holds (ResyncSkip) are left out. The consumer ends equal to the
// backing store having received only the blocks that differed.
func TestResyncRangesSkipsWhatTheConsumerHas(t *testing.T) {
	const size, bs = 1 << 20, 4096
	fsys := hrltest.New()
	fsys.MkdirAll("/vol", 0o755)
	base := make([]byte, size) // random: no block is zero or repeated
	randomBytes(rand.New(rand.NewPCG(1, 2)), base)
	fsys.WriteFile(backingPath, base)
	v := newVolume(t, fsys)
	v.CleanStart = true
	openVolume(t, v)
	defer v.Close()
	// Written here (the failover volume's writes): 3 blocks.
	for i, off := range []int64{2 * bs, 40 * bs, 200 * bs} {
		if _, err := v.WriteAt(fill(bs, byte(0xe0+i)), off); err != nil { // distinct: no REF
			t.Fatal(err)
		}
	}
	// The consumer (the primary disk) differs in 2 other blocks, in a
	// range named to ResyncRanges.
	remote := append([]byte(nil), base...)
	copy(remote[100*bs:], fill(bs, 1))
	copy(remote[130*bs:], fill(bs, 2))
	last, err := v.ResyncRanges([]tracker.Range{{Off: 96 * bs, Len: 48 * bs}}, "reprotect")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range v.Segments() { // dropped: the consumer never gets them
		if s.LastSeq <= last {
			if err := v.Ack(s.FirstSeq); err != nil {
				t.Fatal(err)
			}
		}
	}
	asked := 0
	v.ResyncSkip = func(off int64, b []byte) bool {
		asked++
		return bytes.Equal(remote[off:off+int64(len(b))], b)
	}
	c := startConsumer(t, fsys, v, image(append([]byte(nil), remote...)))
	if err := v.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	c.drain()
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(c.image(), backing) {
		t.Fatal("the consumer differs from the backing store after the resync")
	}
	gen := v.Status().Generation
	if got := c.stats(gen).payload[hrl.TypeResync]; got != 5*bs {
		t.Fatalf("resync sent %d bytes, want the 5 differing blocks (%d); ResyncSkip was asked %d times", got, 5*bs, asked)
	}
	if n := tracker.PinnedRegions(v); n != 0 {
		t.Fatalf("%d regions pinned after the resync", n)
	}
	if _, err := v.Tag(hrl.TagCrash, "synced"); err != nil {
		t.Fatalf("tag after the resync: %v", err)
	}
}

// Rebase drops a closed volume's journal and dirty regions and makes the
// next Open journal the given generation from the given seq.
func TestRebase(t *testing.T) {
	open := fileVolume(t, nil)
	v := open()
	for i := range 8 {
		if _, err := v.WriteAt(fill(4096, byte(i+1)), int64(i)*(1<<19)); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	dir, size := v.JournalDir, v.Size()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	release, err := tracker.LockJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := tracker.Rebase(dir, size, 7, 100); err != nil {
		t.Fatal(err)
	}
	if err := tracker.Rebase(dir, size, 7, 100); err != nil { // again, after a crash
		t.Fatal(err)
	}
	release()
	v = open()
	defer v.Close()
	st := v.Status()
	if st.Generation != 7 || st.NextSeq != 100 || st.DirtyRegions != 0 || st.Resync != "" || len(v.Segments()) != 0 {
		t.Fatalf("after Rebase(gen 7, next 100): %+v, %d segments", st, len(v.Segments()))
	}
	if _, err := v.WriteAt(fill(4096, 9), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Seal(); err != nil {
		t.Fatal(err)
	}
	if s := v.Segments(); len(s) != 1 || s[0].FirstSeq != 100 || s[0].Generation != 7 {
		t.Fatalf("first segment after Rebase: %+v", s)
	}
	if _, err := tracker.LockJournal(dir); err == nil {
		t.Fatal("LockJournal succeeded while the volume is open")
	}
	if err := tracker.Rebase(t.TempDir(), size, 1, 1); err == nil || os.IsNotExist(err) {
		t.Fatalf("Rebase of a directory with no journal: %v", err)
	}
}
