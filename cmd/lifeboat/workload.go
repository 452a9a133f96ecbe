package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"

	"lifeboat/hrl"
	"lifeboat/tracker"
)

// recoveryPoint is a tag the demo took, with the volume's hash at that moment.
type recoveryPoint struct {
	Seq  uint64
	Kind hrl.TagKind
	Name string
	Hash string
}

// makeVolume creates the sparse volume with some initial data, and
// initial.img, a copy of it: the state of the recovery site after the
// initial replication.
func makeVolume(p demoPaths, size int64, seed uint64) error {
	f, err := os.OpenFile(p.volume, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size the scratch volume: %w", err)
	}
	rng := rand.New(rand.NewPCG(seed, 0x1b))
	chunk := make([]byte, 64<<10)
	for range 32 {
		fillRandom(rng, chunk)
		if _, err := f.WriteAt(chunk, rng.Int64N(size/int64(len(chunk)))*int64(len(chunk))); err != nil {
			return err
		}
	}
	if err := copySparse(p.initial, f, size); err != nil {
		return fmt.Errorf("copy the initial image: %w", err)
	}
	return f.Sync()
}

// runWorkload writes through v and returns the recovery points it took.
func runWorkload(ctx context.Context, w io.Writer, v *tracker.Volume, volumePath string, seed uint64) ([]recoveryPoint, error) {
	rng := rand.New(rand.NewPCG(seed, 0x2c))
	size := v.Size()
	var points []recoveryPoint
	tag := func(kind hrl.TagKind, name string) error {
		seq, err := v.Tag(kind, name)
		if err != nil {
			return fmt.Errorf("tag %q: %w", name, err)
		}
		// Tag returns once every write before it is journaled and the
		// segment sealed; the file now holds exactly that point in time.
		h, err := hashFile(volumePath)
		if err != nil {
			return err
		}
		points = append(points, recoveryPoint{Seq: seq, Kind: kind, Name: name, Hash: h})
		fmt.Fprintf(w, "    recovery point %q (%s-consistent) at seq %d\n", name, kind, seq)
		return nil
	}
	write := func(p []byte, off int64) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := v.WriteAt(p, off); err != nil {
			return fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)
		}
		return nil
	}
	blockAt := func(n int64) int64 { return rng.Int64N((size-n)/4096+1) * 4096 }
	steps := []struct {
		what string
		run  func() error
	}{
		{"256 random 4 KiB writes", func() error {
			b := make([]byte, 4096)
			for range 256 {
				fillRandom(rng, b)
				if err := write(b, blockAt(4096)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"4 random 1 MiB writes", func() error {
			b := make([]byte, 1<<20)
			for range 4 {
				fillRandom(rng, b)
				if err := write(b, blockAt(1<<20)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"", func() error { return tag(hrl.TagCrash, "crash-1") }},
		{"one 4 KiB block written 32 times at different offsets (dedupe: REF records)", func() error {
			b := make([]byte, 4096)
			fillRandom(rng, b)
			for range 32 {
				if err := write(b, blockAt(4096)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"64 unaligned writes of 1 B to 12 KiB", func() error {
			for range 64 {
				b := make([]byte, 1+rng.IntN(12<<10))
				fillRandom(rng, b)
				if err := write(b, rng.Int64N(size-int64(len(b)))); err != nil {
					return err
				}
			}
			return nil
		}},
		{"1 MiB of zeros written as data (ZERO records)", func() error { return write(make([]byte, 1<<20), blockAt(1<<20)) }},
		{"write-zeroes of 3 MiB at an unaligned offset", func() error {
			return v.WriteZeroes(blockAt(4<<20)+1000, 3<<20)
		}},
		{"trim of 2 MiB", func() error { return v.Trim(blockAt(2<<20), 2<<20) }},
		{"", func() error { return tag(hrl.TagApp, "app-1") }},
		{"16 more 4 KiB writes after the last recovery point", func() error {
			b := make([]byte, 4096)
			for range 16 {
				fillRandom(rng, b)
				if err := write(b, blockAt(4096)); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, s := range steps {
		if s.what != "" {
			fmt.Fprintf(w, "    %s\n", s.what)
		}
		if err := s.run(); err != nil {
			return points, fmt.Errorf("demo workload: %w", err)
		}
	}
	return points, nil
}

// replayAndCompare replays every segment onto a copy of initial.img,
// checks each recovery point and the final image against the volume.
func replayAndCompare(w io.Writer, p demoPaths, rep *journalReport, points []recoveryPoint) error {
	src, err := os.Open(p.initial)
	if err != nil {
		return err
	}
	st, err := src.Stat()
	if err == nil {
		err = copySparse(p.replayed, src, st.Size())
	}
	src.Close()
	if err != nil {
		return fmt.Errorf("copy initial.img: %w", err)
	}
	dst, err := hrl.OSFS{}.OpenFile(p.replayed, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	byName := map[string]recoveryPoint{}
	for _, rp := range points {
		byName[rp.Name] = rp
	}
	var bad []string
	onTag := func(seq uint64, t hrl.Tag) error {
		got, err := hashFile(p.replayed)
		if err != nil {
			return err
		}
		verdict := "MATCH (the volume as it was when tagged)"
		if want, ok := byName[t.Name]; !ok || want.Hash != got || want.Seq != seq {
			verdict = "MISMATCH"
			bad = append(bad, fmt.Sprintf("recovery point %q at seq %d", t.Name, seq))
		}
		fmt.Fprintf(w, "    recovery point %-8q at seq %d: sha256 %s %s\n", t.Name, seq, got[:16], verdict)
		return nil
	}
	for _, s := range rep.Segments {
		if err := replayFile(s.File, replayer{dst}, onTag); err != nil {
			return err
		}
	}
	if err := dst.Sync(); err != nil {
		return err
	}
	want, err := hashFile(p.volume)
	if err != nil {
		return err
	}
	got, err := hashFile(p.replayed)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "    replayed %d segments\n\nvolume.img   sha256 %s\nreplayed.img sha256 %s\n", len(rep.Segments), want, got)
	if want != got {
		bad = append(bad, "the final image")
	}
	if len(bad) > 0 {
		fmt.Fprintln(w, "MISMATCH")
		return failure("replaying the journal did not reproduce %v; this is a bug: keep the directory and report it", bad)
	}
	fmt.Fprintln(w, "MATCH: the journal holds every change, and every recovery point replays to the exact bytes")
	return nil
}

func replayFile(path string, dst hrl.Replayer, onTag func(uint64, hrl.Tag) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := hrl.Replay(f, st.Size(), path, dst, onTag); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	return nil
}

// replayer applies records to a file: ZERO becomes a hole punch (trim) or
// a zeroed range.
type replayer struct{ hrl.File }

func (r replayer) Zero(off, n int64, trim bool) error {
	if trim {
		return r.PunchHole(off, n)
	}
	return r.ZeroRange(off, n)
}

// copySparse copies size bytes of src to a new file dst, leaving all-zero
// chunks as holes.
func copySparse(dst string, src io.ReaderAt, size int64) error {
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), size-off)]
		if _, err := src.ReadAt(b, off); err != nil && err != io.EOF {
			return err
		}
		if hrl.IsZero(b) {
			continue
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// hashFile returns the hex sha256 of a file's content.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}
