package failover_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"lifeboat/failover"
	"lifeboat/targets"
)

// slowPoint delays every read of a point.
type slowPoint struct {
	targets.PointReader
	delay time.Duration
}

func (s slowPoint) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.delay)
	return s.PointReader.ReadAt(p, off)
}

// TestViewConcurrentPartialBlocks has goroutines write disjoint byte
// ranges of the same blocks, unaligned, so every write is a partial block:
// a read-modify-write that raced another write of its block would put the
// point's bytes back over the other goroutine's. Readers, trims of other
// blocks and flushes run meanwhile.
func TestViewConcurrentPartialBlocks(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) { testConcurrent(t, kind) })
	}
}

func testConcurrent(t *testing.T, kind string) {
	const (
		size    = 8 << 20
		shared  = 512 // blocks 0..511: every writer writes into each of them
		writers = 8
		slot    = bs / writers // each writer's bytes of a shared block
		rounds  = 3
	)
	src := newSource(t, kind, "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", size)
	src.fillAll(rand.New(rand.NewPCG(3, 3)))
	seq := src.point()
	// A slow point (as a cloud target's is) widens the window of a
	// read-modify-write, so that an unlocked one would lose bytes.
	v, err := failover.OpenView(slowPoint{src.open(seq), 100 * time.Microsecond}, filepath.Join(t.TempDir(), "ov"))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	want := bytes.Clone(src.points[seq])
	var mu sync.Mutex // guards want for the disjoint part
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 64)
	for g := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 4))
			// Own slot of every shared block, skipping its first byte so the
			// write is unaligned. The first round goes through the blocks in
			// the same order as the other writers, all starting together, so
			// that they contend for each block's read-modify-write; later
			// rounds in random order.
			last := make([][]byte, shared)
			<-start
			for round := range rounds {
				order := r.Perm(shared)
				if round == 0 {
					for i := range order {
						order[i] = i
					}
				}
				for _, b := range order {
					off := int64(b)*bs + int64(g*slot) + 1
					p := randBytes(r, slot-1)
					if _, err := v.WriteAt(p, off); err != nil {
						errs <- fmt.Errorf("writer %d round %d: %w", g, round, err)
						return
					}
					last[b] = p
				}
			}
			// Then its own region of whole and partial blocks past the shared
			// ones: an unaligned write and a trim inside it.
			base := int64(shared+g*64) * bs
			off := base + int64(r.IntN(bs))
			p := randBytes(r, 20*bs+r.IntN(bs))
			if _, err := v.WriteAt(p, off); err != nil {
				errs <- err
				return
			}
			toff, tn := base+int64(r.IntN(8*bs)), int64(r.IntN(12*bs)+1)
			if err := v.Trim(toff, tn); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			for b, q := range last {
				copy(want[int64(b)*bs+int64(g*slot)+1:], q)
			}
			copy(want[off:], p)
			clear(want[toff : toff+tn])
			mu.Unlock()
		})
	}
	close(start)
	stop := make(chan struct{})
	var bg sync.WaitGroup
	for i := range 3 {
		bg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 5))
			buf := make([]byte, 300<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				off := r.Int64N(size - int64(len(buf)))
				if _, err := v.ReadAt(buf[:r.IntN(len(buf))+1], off); err != nil {
					errs <- err
					return
				}
				if i == 0 {
					if err := v.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkContent(t, "view after concurrent writes", readAll(t, v), want)
}
