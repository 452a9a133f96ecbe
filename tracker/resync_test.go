package tracker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// With InitialSync a new volume needs a resync of everything before the
// first recovery point, and writes acknowledged meanwhile do not make their
// regions clean: the rest of those regions is not on the replica yet.
func TestInitialSync(t *testing.T) {
	const size = 1 << 20
	fsys := hrltest.New()
	fsys.MkdirAll("/vol", 0o755)
	fsys.WriteFile(backingPath, initialImage(size, 3))
	v := newVolume(t, fsys)
	v.InitialSync = true
	openVolume(t, v)
	st := v.Status()
	if st.Resync != "initial replication: the replica has none of this volume yet" || st.DirtyRegions != st.Regions {
		t.Fatalf("new volume with InitialSync: %+v, want every region dirty and the initial replication as the resync reason", st)
	}
	if _, err := v.Tag(hrl.TagCrash, "x"); !errors.Is(err, tracker.ErrResync) {
		t.Fatalf("tag before the initial replication: %v, want ErrResync", err)
	}
	// A write acknowledged by the consumer leaves its region dirty.
	c := startConsumer(t, fsys, v, make(image, size))
	if _, err := v.WriteAt(fill(4096, 9), 3*tracker.DefaultRegionSize); err != nil {
		t.Fatal(err)
	}
	c.drain()
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if !v.Bitmap().IsDirty(3) || v.Status().DirtyRegions != st.Regions {
		t.Fatalf("acknowledging a write cleared regions the replica has not got: %+v", v.Status())
	}
	if err := v.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if n := tracker.PinnedRegions(v); n != 0 {
		t.Fatalf("%d regions pinned after the initial replication", n)
	}
	seq, err := v.Tag(hrl.TagCrash, "synced")
	if err != nil {
		t.Fatal(err)
	}
	c.waitAcked(seq)
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.DirtyRegions != 0 {
		t.Fatalf("after the initial replication was acknowledged: %d dirty regions", st.DirtyRegions)
	}
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(c.image(), backing) {
		t.Fatal("replica built from nothing differs from the backing store")
	}
	c.stop()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// Opened again: not the first time, no initial replication.
	v = newVolume(t, fsys)
	v.InitialSync = true
	openVolume(t, v)
	if st := v.Status(); st.Resync != "" || st.DirtyRegions != 0 {
		t.Fatalf("reopened volume: %+v, want no resync", st)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// Without volume.json it is new again, even with a clean bitmap.
	if err := fsys.Remove(filepath.Join(journalDir, "volume.json")); err != nil {
		t.Fatal(err)
	}
	v = newVolume(t, fsys)
	v.InitialSync = true
	openVolume(t, v)
	defer v.Close()
	if st := v.Status(); st.Resync == "" || st.DirtyRegions != st.Regions {
		t.Fatalf("volume without its volume.json: %+v, want an initial replication of every region", st)
	}
}

// Without InitialSync (the default) a new volume can take recovery points
// at once, as before.
func TestNoInitialSyncByDefault(t *testing.T) {
	_, v, _ := memVolume(t, 1<<20)
	defer v.Close()
	if st := v.Status(); st.Resync != "" {
		t.Fatalf("new volume: resync %q, want none", st.Resync)
	}
	if _, err := v.Tag(hrl.TagCrash, "x"); err != nil {
		t.Fatal(err)
	}
}

// A resync of a sparse file reads only its data: each hole becomes one
// trim-flagged ZERO record. Data extents start and end on 4 KiB boundaries,
// which are not journal block boundaries when the block size is 16 KiB,
// and the volume's last block is short.
func TestResyncSkipsHoles(t *testing.T) {
	const size = 64<<20 - 512
	extents := []struct{ off, n int64 }{ // 4 MiB of data
		{0, 256 << 10},
		{1<<20 + 12<<10, 1<<20 - 8<<10},
		{10<<20 + 4<<10, 2<<20 + 4<<10},
		{40<<20 + 28<<10, 512<<10 - 12<<10},
		{size - 256<<10 - 3584, 256<<10 + 3584}, // to the end
	}
	const zeros = 64 << 10 // written, so allocated, but all zero
	for _, bs := range []int{4096, 16384} {
		t.Run(fmt.Sprint("block", bs), func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "disk.img")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			f.Truncate(size)
			r := rand.New(rand.NewPCG(uint64(bs), 1))
			var data int64
			for _, e := range extents {
				p := make([]byte, e.n)
				randomBytes(r, p)
				clear(p[e.n/2 : e.n/2+zeros])
				f.WriteAt(p, e.off)
				data += e.n
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			v := tracker.NewVolume(img, filepath.Join(dir, "journal"))
			v.Logger = quiet
			v.BlockSize = bs
			v.InitialSync = true
			v.SegmentAge = 0
			openVolume(t, v)
			defer v.Close()
			c := startConsumer(t, hrl.OSFS{}, v, image(bytes.Repeat([]byte{0xee}, size)))
			var calls, done, total int64
			err = v.Resync(context.Background(), func(d, tot int64) {
				if d < done || d > tot || total != 0 && tot != total {
					t.Errorf("progress %d of %d after %d of %d", d, tot, done, total)
				}
				calls++
				done, total = d, tot
			})
			if err != nil {
				t.Fatal(err)
			}
			if done != size || total != size {
				t.Fatalf("progress ended at %d of %d, want %d of %d", done, total, size, size)
			}
			seq, err := v.Tag(hrl.TagCrash, "synced")
			if err != nil {
				t.Fatal(err)
			}
			c.waitAcked(seq)
			// Payload: exactly the non-zero journal blocks that overlap
			// a data extent (data is read in whole blocks); every other
			// byte is a ZERO record, trimmed where it is a hole.
			want, _ := os.ReadFile(img)
			var wantPayload int64
			for b := int64(0); b < size; b += int64(bs) {
				blk := want[b:min(b+int64(bs), size)]
				for _, e := range extents {
					if e.off < b+int64(len(blk)) && b < e.off+e.n && !hrl.IsZero(blk) {
						wantPayload += int64(len(blk))
						break
					}
				}
			}
			g := c.stats(1)
			payload := g.payload[hrl.TypeResync] + g.payload[hrl.TypeWrite]
			if payload != wantPayload || payload > data {
				t.Fatalf("resync journaled %d bytes of payload, want %d (data %d bytes)", payload, wantPayload, data)
			}
			if g.zero < int64(len(extents))*(zeros-2*int64(bs)) || g.trimmed+g.zero+payload != size || g.trimmed < size-data-int64(2*len(extents)*bs) {
				t.Fatalf("ZERO records: %d bytes written as zeros, %d trimmed, %d payload; want %d in all", g.zero, g.trimmed, payload, int64(size))
			}
			if !bytes.Equal(c.image(), want) {
				t.Fatal("replica differs from the sparse backing file")
			}
		})
	}
}

// A hole that is written after the resync planned it, before it journals
// it, must not be journaled as zeros after that write.
func TestResyncHoleWrittenMeanwhile(t *testing.T) {
	const size = 1 << 20
	fsys := &holeFS{CrashFS: hrltest.New()}
	fsys.MkdirAll("/vol", 0o755)
	initial := make([]byte, size)
	copy(initial[256<<10:], fill(64<<10, 1)) // data, the rest holes
	fsys.WriteFile(backingPath, initial)
	v := newVolume(t, fsys)
	v.InitialSync = true
	openVolume(t, v)
	defer v.Close()
	fsys.afterSeek = func() {
		// Inside the first hole, which the resync has just found.
		if _, err := v.WriteAt(fill(8192, 2), 64<<10); err != nil {
			t.Error(err)
		}
	}
	c := startConsumer(t, fsys, v, image(bytes.Repeat([]byte{0xee}, size)))
	if err := v.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	seq, err := v.Tag(hrl.TagCrash, "synced")
	if err != nil {
		t.Fatal(err)
	}
	c.waitAcked(seq)
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(backing[64<<10:72<<10], fill(8192, 2)) {
		t.Fatal("the write did not happen during the resync")
	}
	if !bytes.Equal(c.image(), backing) {
		t.Fatal("replica differs from the backing store: a hole was journaled after a write into it")
	}
	if g := c.stats(1); g.trimmed == 0 {
		t.Fatal("no holes journaled")
	}
}
