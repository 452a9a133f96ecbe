package tracker_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// countFS counts the bytes written to journal segment files.
type countFS struct {
	*hrltest.CrashFS
	segBytes atomic.Int64
}

func (c *countFS) OpenFile(name string, flag int, perm os.FileMode) (hrl.File, error) {
	f, err := c.CrashFS.OpenFile(name, flag, perm)
	if err != nil || !strings.HasSuffix(name, ".hrl") {
		return f, err
	}
	return &countFile{File: f, n: &c.segBytes}, nil
}

type countFile struct {
	hrl.File
	n *atomic.Int64
}

func (f *countFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	f.n.Add(int64(n))
	return n, err
}

const copySize = 16 << 20

// copyVolume is a volume of copySize random bytes that needs its initial
// replication, with CopyMemory set to copyMem.
func copyVolume(t *testing.T, copyMem int64) (*countFS, *tracker.Volume) {
	t.Helper()
	fsys := &countFS{CrashFS: hrltest.New()}
	fsys.MkdirAll("/vol", 0o755)
	fsys.WriteFile(backingPath, initialImage(copySize, 11))
	v := newVolume(t, fsys)
	v.SegmentBytes = 1 << 20
	v.InitialSync = true
	v.CopyMemory = copyMem
	openVolume(t, v)
	t.Cleanup(func() { v.Close() })
	return fsys, v
}

// liveWrites writes random blocks until stop is closed.
func liveWrites(t *testing.T, v *tracker.Volume, stop chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(3, 4))
		p := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			randomBytes(r, p)
			if _, err := v.WriteAt(p, r.Int64N(copySize/4096)*4096); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	return &wg
}

// finish tags the volume once a resync is done, waits for the consumer
// and checks that the replica equals the backing store.
func finish(t *testing.T, fsys interface{ ReadFile(string) ([]byte, error) }, v *tracker.Volume, c *consumer, tag string) {
	t.Helper()
	seq, err := v.Tag(hrl.TagCrash, tag)
	if err != nil {
		t.Fatal(err)
	}
	c.waitAcked(seq)
	backing, _ := fsys.ReadFile(backingPath)
	if !bytes.Equal(c.image(), backing) {
		t.Fatalf("replica differs from the backing store after the resync (tag %q)", tag)
	}
}

// With CopyMemory, the initial replication is shipped from memory: the
// journal directory gets (almost) nothing of it, live writes during it
// stay ordered against it, and the memory it holds stays bounded. Without
// CopyMemory the same copy is written to the journal first.
func TestResyncCopyHeldInMemory(t *testing.T) {
	var journaled int64
	for _, mem := range []int64{0, tracker.MinCopyMemory} {
		fsys, v := copyVolume(t, mem)
		c := startConsumer(t, fsys.CrashFS, v, make(image, copySize))
		stop := make(chan struct{})
		wg := liveWrites(t, v, stop)
		if err := v.Resync(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		written := fsys.segBytes.Load()
		finish(t, fsys, v, c, "copied")
		t.Logf("CopyMemory %d: %d bytes written to segment files, at most %d bytes unacknowledged", mem, written, c.maxJournalBytes())
		if mem == 0 {
			if journaled = written; written < copySize/2 {
				t.Fatalf("a copy journaled to disk wrote only %d bytes to segment files", written)
			}
			continue
		}
		if written > journaled/8 {
			t.Fatalf("the copy held in memory wrote %d bytes to segment files, journaled to disk %d", written, journaled)
		}
		// CopyMemory, plus what live writes add to the open memory
		// segment before the copy checks for room again, plus the open
		// segment file.
		if m := c.maxJournalBytes(); m > mem+3<<20 {
			t.Fatalf("%d bytes unacknowledged during the copy, CopyMemory is %d", m, mem)
		}
	}
}

// A copy that finds CopyMemory full waits for the consumer, and the writes
// that come meanwhile go to a segment file, shipped in order between the
// copy's memory segments.
func TestResyncCopyWaitsForTheConsumer(t *testing.T) {
	fsys, v := copyVolume(t, tracker.MinCopyMemory)
	errc := make(chan error, 1)
	go func() { errc <- v.Resync(context.Background(), nil) }()
	deadline := time.Now().Add(20 * time.Second)
	for len(v.Segments()) == 0 || tracker.OpenSegmentInMemory(v) {
		if time.Now().After(deadline) {
			t.Fatalf("the copy did not wait for the consumer: %+v", v.Status())
		}
		time.Sleep(time.Millisecond)
	}
	before := fsys.segBytes.Load()
	if _, err := v.WriteAt(fill(8192, 7), 5<<20); err != nil {
		t.Fatal(err)
	}
	if fsys.segBytes.Load() <= before {
		t.Fatal("a write while the copy waits did not go to a segment file")
	}
	if st := v.Status(); st.JournalBytes > tracker.MinCopyMemory+1<<20 {
		t.Fatalf("the waiting copy holds %d bytes", st.JournalBytes)
	}
	c := startConsumer(t, fsys.CrashFS, v, make(image, copySize))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	finish(t, fsys, v, c, "copied")
}

// A Close with memory segments not yet acknowledged loses them: the next
// Open asks for a resync in a new generation at seqs never used, and it
// copies only what was not acknowledged before.
func TestCopyLostAtCloseResumesInANewGeneration(t *testing.T) {
	fsys, v := copyVolume(t, tracker.MinCopyMemory)
	replica := make(image, copySize)
	errc := make(chan error, 1)
	go func() { errc <- v.Resync(context.Background(), nil) }()
	// Acknowledge the first three segments, then stop consuming.
	var offered uint64
	for i := 0; i < 3; i++ {
		s, err := v.NextSegment(context.Background(), offered)
		if err != nil {
			t.Fatal(err)
		}
		if err := replayInto(v, s, replica, ^uint64(0)); err != nil {
			t.Fatal(err)
		}
		if err := v.Ack(s.FirstSeq); err != nil {
			t.Fatal(err)
		}
		offered = s.FirstSeq
	}
	for len(v.Segments()) == 0 || tracker.OpenSegmentInMemory(v) {
		time.Sleep(time.Millisecond) // the copy waits for room
	}
	used := v.Status().NextSeq - 1
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err == nil {
		t.Fatal("a resync interrupted by Close reported success")
	}
	v = newVolume(t, fsys)
	v.SegmentBytes = 1 << 20
	v.CopyMemory = tracker.MinCopyMemory
	openVolume(t, v)
	defer v.Close()
	st := v.Status()
	if st.Mode != tracker.ModeJournal || st.Generation != 2 || !strings.Contains(st.Resync, "held in memory") || st.NextSeq <= used {
		t.Fatalf("after a Close that lost segments held in memory: %+v (seqs used up to %d)", st, used)
	}
	if st.DirtyRegions >= st.Regions || st.DirtyRegions == 0 {
		t.Fatalf("%d of %d regions dirty: the copy must resume, not start over", st.DirtyRegions, st.Regions)
	}
	c := startConsumer(t, fsys.CrashFS, v, replica)
	if err := v.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if g := v.Status().Generation; g != 2 {
		t.Fatalf("the resync after lost segments runs in generation %d, want 2", g)
	}
	finish(t, fsys, v, c, "copied")
	if sent := c.stats(2).payload[hrl.TypeResync]; sent > st.DirtyRegions*tracker.DefaultRegionSize {
		t.Fatalf("the resumed copy sent %d bytes for %d dirty regions", sent, st.DirtyRegions)
	}
}
