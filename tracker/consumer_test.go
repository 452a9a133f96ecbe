package tracker_test

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// genStats counts what the segments of one generation journaled.
type genStats struct {
	payload   map[hrl.RecordType]int64 // payload bytes of WRITE and RESYNC records
	zero      int64                    // bytes zeroed by ZERO records without the trim flag
	trimmed   int64                    // bytes zeroed by trim-flagged ZERO records
	maxResync int64                    // largest RESYNC payload
}

// consumer plays the shipper: it takes each sealed segment in order, counts
// its records, replays it onto img and acknowledges it. It also watches
// that the unacknowledged journal never exceeds the quota.
type consumer struct {
	t      *testing.T
	fsys   hrl.FS
	v      *tracker.Volume
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	img        image
	gens       map[uint64]*genStats
	maxJournal int64
	acked      uint64 // last seq acknowledged
}

func startConsumer(t *testing.T, fsys hrl.FS, v *tracker.Volume, img image) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &consumer{t: t, fsys: fsys, v: v, cancel: cancel, img: img, gens: map[uint64]*genStats{}}
	c.wg.Add(2)
	go c.run(ctx)
	go c.watch(ctx)
	t.Cleanup(c.stop)
	return c
}

func (c *consumer) stop() { c.cancel(); c.wg.Wait() }

func (c *consumer) run(ctx context.Context) {
	defer c.wg.Done()
	var after uint64
	for {
		s, err := c.v.NextSegment(ctx, after)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, tracker.ErrClosed) {
				c.t.Errorf("NextSegment: %v", err)
			}
			return
		}
		if err := c.apply(s); err != nil {
			c.t.Errorf("apply %s: %v", s.Path, err)
			return
		}
		if err := c.v.Ack(s.FirstSeq); err != nil {
			// A test that closes the volume before its cleanup stops
			// the consumer can close it under an Ack.
			if !errors.Is(err, tracker.ErrClosed) {
				c.t.Errorf("ack %d: %v", s.FirstSeq, err)
			}
			return
		}
		c.mu.Lock()
		c.acked = s.LastSeq
		c.mu.Unlock()
		after = s.FirstSeq
	}
}

// watch samples Status().JournalBytes.
func (c *consumer) watch(ctx context.Context) {
	defer c.wg.Done()
	for ctx.Err() == nil {
		c.sample()
		time.Sleep(100 * time.Microsecond)
	}
}

func (c *consumer) sample() {
	st := c.v.Status()
	c.mu.Lock()
	c.maxJournal = max(c.maxJournal, st.JournalBytes)
	c.mu.Unlock()
}

func (c *consumer) apply(s hrl.SegmentInfo) error {
	c.sample()
	f, err := c.v.OpenSegment(s)
	if err != nil {
		return err
	}
	defer f.Close()
	rd, err := hrl.NewReader(f, s.Size, s.Path)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.gens[s.Generation]
	if g == nil {
		g = &genStats{payload: map[hrl.RecordType]int64{}}
		c.gens[s.Generation] = g
	}
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		switch rec.Type {
		case hrl.TypeWrite, hrl.TypeResync:
			g.payload[rec.Type] += int64(len(rec.Payload))
			if rec.Type == hrl.TypeResync {
				g.maxResync = max(g.maxResync, int64(len(rec.Payload)))
			}
		case hrl.TypeZero:
			if rec.Flags&hrl.FlagTrim != 0 {
				g.trimmed += int64(rec.Length)
			} else {
				g.zero += int64(rec.Length)
			}
		}
	}
	_, err = hrl.Replay(f, s.Size, s.Path, c.img, nil)
	return err
}

// waitAcked waits until every record up to seq is acknowledged.
func (c *consumer) waitAcked(seq uint64) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		done := c.acked >= seq
		c.mu.Unlock()
		if done {
			return
		}
		time.Sleep(time.Millisecond)
	}
	c.t.Fatalf("consumer did not acknowledge seq %d in time", seq)
}

// drain seals the open segment and waits until the consumer acknowledged
// everything journaled so far.
func (c *consumer) drain() {
	c.t.Helper()
	if err := c.v.Seal(); err != nil {
		c.t.Fatal(err)
	}
	if next := c.v.Status().NextSeq; next > 1 {
		c.waitAcked(next - 1)
	}
}

func (c *consumer) stats(gen uint64) genStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.gens[gen]; g != nil {
		return *g
	}
	return genStats{payload: map[hrl.RecordType]int64{}}
}

func (c *consumer) image() image {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append(image(nil), c.img...)
}

func (c *consumer) maxJournalBytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxJournal
}

// holeFS is an in-memory file system whose backing file reports its
// all-zero 4 KiB blocks as holes through hrl.Seeker, as a sparse file on a
// real file system reports unallocated blocks. afterSeek, if set, runs
// after a SeekData has computed its answer and before it returns it.
type holeFS struct {
	*hrltest.CrashFS
	mu        sync.Mutex
	afterSeek func()
}

func (h *holeFS) OpenFile(name string, flag int, perm os.FileMode) (hrl.File, error) {
	f, err := h.CrashFS.OpenFile(name, flag, perm)
	if err != nil || name != backingPath {
		return f, err
	}
	return &holeFile{File: f, fs: h}, nil
}

type holeFile struct {
	hrl.File
	fs *holeFS
}

var _ hrl.Seeker = (*holeFile)(nil)

const holeBlock = 4096

// scan returns the first offset >= off in a block whose zeroness is hole.
func (f *holeFile) scan(off int64, hole bool) (int64, bool) {
	size, _ := f.Size()
	b := make([]byte, holeBlock)
	for blk := off / holeBlock * holeBlock; blk < size; blk += holeBlock {
		n, _ := f.ReadAt(b[:min(holeBlock, size-blk)], blk)
		if hrl.IsZero(b[:n]) == hole {
			return max(blk, off), true
		}
	}
	return size, false
}

func (f *holeFile) SeekData(off int64) (int64, error) {
	pos, ok := f.scan(off, false)
	f.fs.mu.Lock()
	hook := f.fs.afterSeek
	f.fs.afterSeek = nil
	f.fs.mu.Unlock()
	if hook != nil {
		hook()
	}
	if !ok {
		return 0, io.EOF
	}
	return pos, nil
}

func (f *holeFile) SeekHole(off int64) (int64, error) {
	pos, _ := f.scan(off, true)
	return pos, nil
}
