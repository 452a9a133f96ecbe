package hrl_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
)

const crashDir = "/j"

type written struct {
	seq  uint64
	off  uint64
	data []byte
}

// fillAndSeal writes records into segments on fsys, syncing every third
// record and rolling to a new segment every eighth, and returns what was
// appended and the last seq made durable by a completed Sync or Seal.
func fillAndSeal(fsys hrl.FS, seed uint64) (recs []written, durable uint64, err error) {
	r := rand.New(rand.NewPCG(seed, 5))
	src := rand.NewChaCha8([32]byte{byte(seed)})
	var w *hrl.Writer
	next := uint64(1)
	for i := range 20 {
		if w == nil {
			if w, err = hrl.Create(fsys, crashDir, hrl.Header{FirstSeq: next, Generation: 1}, hrl.WriterConfig{Dedupe: hrl.NewWindow(0)}); err != nil {
				return recs, durable, err
			}
		}
		data := make([]byte, 4096*(r.IntN(3)+1))
		src.Read(data)
		off := uint64(r.IntN(64)) * 4096
		first, last, err := w.AppendData(hrl.TypeWrite, off, data)
		if err != nil {
			return recs, durable, err
		}
		if first != last {
			return recs, durable, fmt.Errorf("random data split into %d records", last-first+1)
		}
		recs = append(recs, written{seq: first, off: off, data: data})
		next = last + 1
		switch {
		case i%8 == 7:
			if _, err := w.Seal(); err != nil {
				return recs, durable, err
			}
			durable = last
			w.Close()
			w = nil
		case i%3 == 2:
			if err := w.Sync(); err != nil {
				return recs, durable, err
			}
			durable = last
		}
	}
	return recs, durable, nil
}

// TestCrashWhileFillingAndSealing cuts power at every write and sync while
// segments are filled and sealed, in three crash modes: Recover succeeds
// (a torn tail is no error), every record made durable by a completed Sync
// or Seal is present and intact, and every recovered record is one that was
// written, in order — nothing after a torn tail survives.
func TestCrashWhileFillingAndSealing(t *testing.T) {
	probe := hrltest.New()
	probe.MkdirAll(crashDir, 0o755)
	if _, _, err := fillAndSeal(probe, 1); err != nil {
		t.Fatal(err)
	}
	total := probe.Ops()
	type crash struct {
		mode hrltest.CrashMode
		seed uint64
	}
	var crashes []crash
	for seed := range uint64(8) { // the random modes get several draws per point
		crashes = append(crashes, crash{hrltest.KeepPrefix, seed}, crash{hrltest.KeepRandom, seed})
	}
	crashes = append(crashes, crash{hrltest.DropUnsynced, 0})
	for n := 0; n <= total; n++ {
		for _, c := range crashes {
			mode := c.mode
			fsys := hrltest.New()
			fsys.MkdirAll(crashDir, 0o755)
			fsys.CrashAfter(n)
			recs, durable, err := fillAndSeal(fsys, 1)
			if err != nil && !errors.Is(err, hrltest.ErrCrashed) {
				t.Fatalf("op %d: %v", n, err)
			}
			fsys.Crash(mode, rand.New(rand.NewPCG(uint64(n), c.seed)))
			rec, err := hrl.Recover(fsys, crashDir)
			if err != nil {
				t.Fatalf("op %d %v: recover: %v", n, mode, err)
			}
			var got []written
			for _, s := range rec.Segments {
				if !s.Sealed {
					t.Fatalf("op %d %v: %s not sealed after recovery", n, mode, s.Path)
				}
				got = append(got, readRecords(t, fsys, s)...)
			}
			if len(got) > len(recs) {
				t.Fatalf("op %d %v: recovered %d records, only %d written", n, mode, len(got), len(recs))
			}
			for i, g := range got {
				if g.seq != recs[i].seq || g.off != recs[i].off || !bytes.Equal(g.data, recs[i].data) {
					t.Fatalf("op %d %v: record %d is seq %d at %d, want seq %d at %d (same bytes)", n, mode, i, g.seq, g.off, recs[i].seq, recs[i].off)
				}
			}
			if uint64(len(got)) < durable {
				t.Fatalf("op %d %v: recovered through seq %d, but seq %d was durable", n, mode, len(got), durable)
			}
		}
	}
}

func readRecords(t *testing.T, fsys hrl.FS, s hrl.SegmentInfo) []written {
	t.Helper()
	f, err := fsys.OpenFile(s.Path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := hrl.NewReader(f, s.Size, s.Path)
	if err != nil {
		t.Fatal(err)
	}
	var out []written
	for {
		r, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read recovered %s: %v", s.Path, err)
		}
		out = append(out, written{seq: r.Seq, off: r.Offset, data: append([]byte(nil), r.Payload...)})
	}
}
