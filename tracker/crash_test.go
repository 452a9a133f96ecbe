package tracker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

const (
	crashRegion     = 16 << 10
	crashHotRegions = 4
)

// crashRun is one run of the crash workload.
type crashRun struct {
	fsys     *hrltest.CrashFS
	initial  []byte
	replica  image            // what a consumer applied from acknowledged segments
	model    []byte           // what the backing should hold
	flushed  []byte           // model at the last completed Flush
	flushSeq uint64           // last seq at that Flush
	replSeq  uint64           // last seq applied to the replica
	dirty    map[int64]uint64 // regions written since their last clear -> last seq
	log      []string
	sparse   bool   // the backing file reports all-zero blocks as holes
	copy     bool   // CopyMemory set: the workload's resyncs hold their segments in memory
	copied   bool   // a resync of the workload began
	offered  uint64 // the last seq of a segment offered to the consumer
}

func newCrashRun(t *testing.T, seed uint64, sparse, copy bool) *crashRun {
	t.Helper()
	size := 512 << 10
	c := &crashRun{fsys: hrltest.New(), initial: initialImage(size, seed), dirty: map[int64]uint64{}, sparse: sparse, copy: copy}
	c.fsys.MkdirAll("/vol", 0o755)
	c.fsys.WriteFile(backingPath, c.initial)
	// Baseline: a volume whose replica is complete (bitmap clean), closed
	// cleanly.
	v := c.volume()
	openVolume(t, v)
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	c.replica = image(append([]byte(nil), c.initial...))
	c.model = append([]byte(nil), c.initial...)
	return c
}

func (c *crashRun) volume() *tracker.Volume {
	v := tracker.NewVolume(backingPath, journalDir)
	v.FS = c.fsys
	if c.sparse {
		v.FS = &holeFS{CrashFS: c.fsys}
	}
	v.SegmentBytes = 64 << 10
	v.SegmentAge = 0
	v.Logger = quiet
	v.RegionSize = crashRegion
	// A hot set of 4 of the 32 regions: acknowledged regions are cleared
	// at every checkpoint beyond it, least recently acknowledged first,
	// so the crashes fall in the middle of that clearing too.
	v.ClearDelay, v.HotSetBytes = 0, crashHotRegions*crashRegion
	if c.copy {
		v.CopyMemory = tracker.MinCopyMemory // above the volume: a resync never waits
	}
	return v
}

func (c *crashRun) touch(off, n int64, seq uint64) {
	for r := off / crashRegion; r < (off+n+crashRegion-1)/crashRegion; r++ {
		c.dirty[r] = seq
	}
}

// workload drives the volume until an operation fails (the simulated crash)
// or the script ends. It returns the first error.
func (c *crashRun) workload(v *tracker.Volume, r *rand.Rand) error {
	size := int64(len(c.model))
	for i := range 40 {
		off := r.Int64N(size)
		n := min(r.Int64N(48<<10)+1, size-off)
		if i%2 == 0 {
			off, n = off/4096*4096, min(max(n/4096*4096, 4096), size-off/4096*4096)
		}
		var err error
		switch k := r.IntN(12); {
		case k < 8:
			p := make([]byte, n)
			randomBytes(r, p)
			c.log = append(c.log, fmt.Sprintf("write %d@%d", n, off))
			if _, err = v.WriteAt(p, off); err == nil {
				copy(c.model[off:], p)
			}
		case k < 10:
			c.log = append(c.log, fmt.Sprintf("zero %d@%d", n, off))
			if err = v.WriteZeroes(off, n); err == nil {
				clear(c.model[off : off+n])
			}
		default:
			c.log = append(c.log, fmt.Sprintf("trim %d@%d", n, off))
			if err = v.Trim(off, n); err == nil {
				clear(c.model[off : off+n])
			}
		}
		if err != nil {
			// Not acknowledged: the region only has to be dirty if the
			// backing store changed, which check verifies separately.
			return err
		}
		c.touch(off, n, v.Status().NextSeq-1)
		switch {
		case c.copy && i%15 == 14:
			// The dirty regions' content goes to segments held in memory;
			// the next ack ships them, a crash before it loses them.
			c.log = append(c.log, "resync")
			c.copied = true
			if err := v.Resync(context.Background(), nil); err != nil {
				return err
			}
		case i%5 == 4:
			c.log = append(c.log, "flush")
			if err := v.Flush(); err != nil {
				return err
			}
			c.flushed = append(c.flushed[:0], c.model...)
			c.flushSeq = v.Status().NextSeq - 1
		case i%13 == 12:
			c.log = append(c.log, "ack")
			if err := c.ackAll(v); err != nil {
				return err
			}
		}
	}
	return nil
}

// ackAll plays the consumer: seal, apply every sealed segment to the
// replica, acknowledge it.
func (c *crashRun) ackAll(v *tracker.Volume) error {
	if err := v.Seal(); err != nil {
		return err
	}
	for _, s := range v.Segments() {
		c.offered = max(c.offered, s.LastSeq)
		if err := replayInto(v, s, c.replica, ^uint64(0)); err != nil {
			return err
		}
		c.replSeq = s.LastSeq
		if err := v.Ack(s.FirstSeq); err != nil {
			return err
		}
	}
	for reg, seq := range c.dirty {
		if seq <= c.replSeq {
			delete(c.dirty, reg) // all its changes acknowledged: may be cleared
		}
	}
	return nil
}

// replayInto replays a segment v offers, from its file or from memory.
func replayInto(v *tracker.Volume, s hrl.SegmentInfo, img image, last uint64) error {
	f, err := v.OpenSegment(s)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = hrl.ReplayUntil(f, s.Size, s.Path, img, last, nil)
	return err
}

// TestCrashAtEveryOperation cuts power at every file operation of a
// workload of writes, zeroes, trims, flushes, segment seals and acks, in
// three crash modes, and checks after reopening that: the journal opens
// without error; every record acknowledged by a completed Flush is there;
// every region written since its last clear is dirty; every region where
// the backing store differs from replica+journal is dirty; and a resync
// makes replica+journal equal to the backing store again.
func TestCrashAtEveryOperation(t *testing.T) {
	crashAtEveryOperation(t, false, false, 1)
}

// TestCrashAtEveryOperationSparse is TestCrashAtEveryOperation on a backing
// file that reports its zero blocks as holes, so that the resync after each
// crash journals holes as trimmed ZERO records. Every 5th operation.
func TestCrashAtEveryOperationSparse(t *testing.T) {
	crashAtEveryOperation(t, true, false, 5)
}

// TestCrashAtEveryOperationCopy is TestCrashAtEveryOperation with
// CopyMemory: two resyncs in the workload hold their segments in memory
// (every 2nd operation). A crash loses those not acknowledged yet, and
// the segment files written after them; the reopened volume must then
// resync in a new generation, with every region they changed dirty.
func TestCrashAtEveryOperationCopy(t *testing.T) {
	crashAtEveryOperation(t, false, true, 2)
}

func crashAtEveryOperation(t *testing.T, sparse, copy bool, step int) {
	const seed = 7
	probe := newCrashRun(t, seed, sparse, copy)
	start := probe.fsys.Ops()
	v := probe.volume()
	openVolume(t, v)
	if err := probe.workload(v, rand.New(rand.NewPCG(seed, 0))); err != nil {
		t.Fatal(err)
	}
	total := probe.fsys.Ops() - start
	if testing.Short() {
		step *= 7
	}
	modes := []hrltest.CrashMode{hrltest.DropUnsynced, hrltest.KeepPrefix, hrltest.KeepRandom}
	for n := 0; n <= total+2; n += step {
		for _, mode := range modes {
			t.Run(fmt.Sprintf("op%d/%v", n, mode), func(t *testing.T) {
				t.Parallel()
				c := newCrashRun(t, seed, sparse, copy)
				c.fsys.CrashAfter(n)
				v := c.volume()
				opened := false
				if err := v.Open(context.Background()); err == nil {
					opened = true
					if err := c.workload(v, rand.New(rand.NewPCG(seed, 0))); err != nil && !errors.Is(err, hrltest.ErrCrashed) {
						t.Fatalf("workload: unexpected error %v", err)
					}
				} else if !errors.Is(err, hrltest.ErrCrashed) {
					t.Fatalf("open: %v", err)
				}
				// Power is cut: the file system is dead before the old
				// volume's goroutines are stopped, so they change nothing.
				c.fsys.CrashAfter(0)
				v.Close()
				c.fsys.Crash(mode, rand.New(rand.NewPCG(uint64(n), 3)))
				c.check(t, opened)
			})
		}
	}
}

// check reopens the volume after a crash.
func (c *crashRun) check(t *testing.T, opened bool) {
	t.Helper()
	v := c.volume()
	if err := v.Open(context.Background()); err != nil {
		t.Fatalf("reopen after crash: %v\nops: %v", err, c.log)
	}
	defer v.Close()
	// A power loss is no corruption: the journal is never quarantined
	// after one (which would cost a new generation and a resync).
	if st := v.Status(); strings.Contains(st.Resync, "could not be trusted") {
		t.Fatalf("journal quarantined after a crash: %s\nops: %v", st.Resync, c.log)
	}
	segs := v.Segments()
	// Every record acknowledged by a completed Flush is in the journal,
	// unless segments held in memory were lost: the bitmap stands for
	// them and what followed them (checked below), and the volume must
	// start a new generation.
	st := v.Status()
	lostMemory := strings.Contains(st.Resync, "held in memory")
	if lostMemory && !c.copied {
		t.Fatalf("after a crash with no segment held in memory: %+v", st)
	}
	// Seqs are never used twice, held in memory or not: a consumer that
	// got a segment must never be offered another one with its seqs.
	if st.NextSeq <= c.offered {
		t.Fatalf("after a crash the next seq is %d, but the consumer was offered seqs up to %d\nops: %v", st.NextSeq, c.offered, c.log)
	}
	if c.flushed != nil && c.replSeq < c.flushSeq && !lostMemory {
		img := image(append([]byte(nil), c.replica...))
		var last uint64
		for _, s := range segs {
			if err := replayInto(v, s, img, c.flushSeq); err != nil {
				t.Fatal(err)
			}
			last = max(last, min(s.LastSeq, c.flushSeq))
		}
		if last < c.flushSeq && len(segs) > 0 || !bytes.Equal(img, c.flushed) && len(segs) > 0 {
			t.Fatalf("journal replayed through seq %d (flushed through %d) does not give the flushed state\nops: %v", last, c.flushSeq, c.log)
		}
	}
	// The bitmap covers every region written since its last clear, and
	// every region where the backing differs from replica+journal.
	full := image(append([]byte(nil), c.replica...))
	for _, s := range segs {
		if err := replayInto(v, s, full, ^uint64(0)); err != nil {
			t.Fatal(err)
		}
	}
	backing, _ := c.fsys.ReadFile(backingPath)
	var set int64
	for reg := range v.Bitmap().Regions() {
		if v.Bitmap().IsDirty(reg) {
			set++
		}
	}
	if n := v.Bitmap().Dirty(); n != set {
		t.Fatalf("the bitmap counts %d dirty regions, %d are set", n, set)
	}
	for reg := range int64(len(backing) / crashRegion) {
		o := reg * crashRegion
		differs := !bytes.Equal(backing[o:o+crashRegion], full[o:o+crashRegion])
		_, written := c.dirty[reg]
		if (written || differs) && !v.Bitmap().IsDirty(reg) {
			t.Fatalf("region %d (written=%v, differs=%v) is not dirty after the crash\nops: %v", reg, written, differs, c.log)
		}
	}
	if st := v.Status(); opened && st.Resync == "" {
		t.Fatalf("after a crash the volume must ask for a resync: %+v", st)
	}
	// A resync makes replica+journal equal the backing store.
	if err := v.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	seq, err := v.Tag(hrl.TagCrash, "after-resync")
	if err != nil {
		t.Fatal(err)
	}
	got := image(append([]byte(nil), c.replica...))
	for _, s := range v.Segments() {
		if err := replayInto(v, s, got, seq); err != nil {
			t.Fatal(err)
		}
	}
	backing, _ = c.fsys.ReadFile(backingPath)
	if !bytes.Equal(got, backing) {
		t.Fatalf("after resync, replica+journal differs from the backing store\nops: %v", c.log)
	}
}
