package tracker_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

var quiet = slog.New(slog.DiscardHandler)

const (
	backingPath = "/vol/disk.img"
	journalDir  = "/vol/journal"
)

// image is an in-memory volume that journal segments are replayed onto.
type image []byte

func (m image) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
func (m image) Zero(off, n int64, _ bool) error          { clear(m[off : off+n]); return nil }

func initialImage(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	src := rand.NewChaCha8([32]byte{byte(seed), 1})
	b := make([]byte, size)
	for i := 0; i < size; i += 4096 {
		if r.IntN(3) == 0 {
			continue // leave some zero blocks
		}
		src.Read(b[i:min(i+4096, size)])
	}
	return b
}

// randomBytes fills p from r quickly.
func randomBytes(r *rand.Rand, p []byte) {
	src := rand.NewChaCha8([32]byte{byte(r.Uint64()), byte(r.Uint64()), byte(r.Uint64())})
	src.Read(p)
}

func newVolume(t testing.TB, fsys hrl.FS) *tracker.Volume {
	t.Helper()
	v := tracker.NewVolume(backingPath, journalDir)
	v.FS = fsys
	v.SegmentBytes = 64 << 10 // many rolls
	v.SegmentAge = 0
	// The tests of the clearing rule see every clear at once; TestClearDelay
	// and TestHotSet set the delay and the hot set.
	v.ClearDelay, v.HotSetBytes = 0, 0
	v.Logger = quiet
	return v
}

func openVolume(t testing.TB, v *tracker.Volume) {
	t.Helper()
	if err := v.Open(context.Background()); err != nil {
		t.Fatalf("open: %v", err)
	}
}

// randomOp applies one random operation through the volume and to the
// model, returning a description for failure messages.
func randomOp(t *testing.T, r *rand.Rand, v *tracker.Volume, model []byte) string {
	t.Helper()
	size := int64(len(model))
	off := r.Int64N(size)
	n := min(r.Int64N(256<<10)+1, size-off)
	if r.IntN(2) == 0 { // aligned
		off = off / 4096 * 4096
		n = max((n/4096)*4096, 4096)
		n = min(n, size-off)
	}
	switch k := r.IntN(10); {
	case k < 6:
		p := make([]byte, n)
		switch r.IntN(4) {
		case 0: // zeros
		case 1: // repeat an existing block (dedupe)
			src := r.Int64N(size/4096) * 4096
			for i := int64(0); i < n; i += 4096 {
				copy(p[i:], model[src:src+4096])
			}
		default:
			randomBytes(r, p)
		}
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatalf("write %d@%d: %v", n, off, err)
		}
		copy(model[off:], p)
		return fmt.Sprintf("write %d@%d", n, off)
	case k < 8:
		if err := v.WriteZeroes(off, n); err != nil {
			t.Fatalf("zero %d@%d: %v", n, off, err)
		}
		clear(model[off : off+n])
		return fmt.Sprintf("zero %d@%d", n, off)
	default:
		if err := v.Trim(off, n); err != nil {
			t.Fatalf("trim %d@%d: %v", n, off, err)
		}
		clear(model[off : off+n])
		return fmt.Sprintf("trim %d@%d", n, off)
	}
}

// replayJournal replays every sealed segment onto img and calls onTag at
// each TAG.
func replayJournal(t *testing.T, fsys hrl.FS, segs []hrl.SegmentInfo, img image, onTag func(seq uint64, tag hrl.Tag) error) {
	t.Helper()
	for _, s := range segs {
		f, err := fsys.OpenFile(s.Path, os.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hrl.Replay(f, s.Size, s.Path, img, onTag); err != nil {
			t.Fatalf("replay: %v", err)
		}
		f.Close()
	}
}

// TestReplayReproducesBackingAtEveryTag is the journal's property test: for
// many random sequences of aligned and unaligned writes, zeroes, trims and
// tags, replaying the journal onto the initial image gives the backing
// store byte for byte at every tag.
func TestReplayReproducesBackingAtEveryTag(t *testing.T) {
	seeds := 40
	if testing.Short() {
		seeds = 5
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 99))
			size := (r.IntN(64)+8)*64<<10 - r.IntN(2)*512 // sometimes not a multiple of 4 KiB
			initial := initialImage(size, seed)
			fsys := hrltest.New()
			fsys.MkdirAll("/vol", 0o755)
			fsys.WriteFile(backingPath, initial)
			v := newVolume(t, fsys)
			v.Dedupe = seed%4 != 3
			openVolume(t, v)
			model := append([]byte(nil), initial...)
			atTag := map[uint64][32]byte{}
			var ops []string
			for range r.IntN(150) + 20 {
				ops = append(ops, randomOp(t, r, v, model))
				if r.IntN(12) == 0 {
					seq, err := v.Tag(hrl.TagCrash, fmt.Sprint("t", len(ops)))
					if err != nil {
						t.Fatal(err)
					}
					got, _ := fsys.ReadFile(backingPath)
					if !bytes.Equal(got, model) {
						t.Fatalf("backing differs from model after %v", ops)
					}
					atTag[seq] = sha256.Sum256(model)
				}
			}
			seq, err := v.Tag(hrl.TagApp, "final")
			if err != nil {
				t.Fatal(err)
			}
			atTag[seq] = sha256.Sum256(model)
			img := image(append([]byte(nil), initial...))
			seen := 0
			replayJournal(t, fsys, v.Segments(), img, func(seq uint64, tag hrl.Tag) error {
				want, ok := atTag[seq]
				if !ok {
					t.Fatalf("unexpected tag seq %d %+v", seq, tag)
				}
				if sha256.Sum256(img) != want {
					t.Fatalf("replay differs from the backing at tag %q (seq %d)", tag.Name, seq)
				}
				seen++
				return nil
			})
			if seen != len(atTag) {
				t.Fatalf("replay saw %d tags, want %d", seen, len(atTag))
			}
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
