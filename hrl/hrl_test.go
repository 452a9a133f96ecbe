package hrl_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"lifeboat/hrl"
)

func newWriter(t testing.TB, dir string, dedupe bool) *hrl.Writer {
	t.Helper()
	var cfg hrl.WriterConfig
	if dedupe {
		cfg.Dedupe = hrl.NewWindow(0)
	}
	w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{Generation: 3, FirstSeq: 10, VolumeID: [16]byte{1, 2, 3}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func block(seed byte) []byte {
	b := make([]byte, hrl.DefaultBlockSize)
	r := rand.New(rand.NewPCG(uint64(seed), 7))
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return b
}

type rec struct {
	typ    hrl.RecordType
	off    uint64
	length uint64
}

func readAll(t *testing.T, path string) ([]rec, *hrl.Reader, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	rd, err := hrl.NewReader(f, st.Size(), path)
	if err != nil {
		return nil, nil, err
	}
	var out []rec
	for {
		r, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return out, rd, err
		}
		out = append(out, rec{r.Type, r.Offset, r.Length})
	}
}

func TestRoundTripAndSplit(t *testing.T) {
	dir := t.TempDir()
	w := newWriter(t, dir, true)
	zero := make([]byte, 2*hrl.DefaultBlockSize)
	data := append(append(append([]byte{}, block(1)...), zero...), block(2)...)
	if _, _, err := w.AppendData(hrl.TypeWrite, 0, data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AppendZero(1<<20, 8192, true); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AppendTag(hrl.Tag{Kind: hrl.TagApp, Name: "nightly"}); err != nil {
		t.Fatal(err)
	}
	info, err := w.Seal()
	if err != nil {
		t.Fatal(err)
	}
	if info.FirstSeq != 10 || info.LastSeq != 14 || info.Count != 5 || !info.Sealed {
		t.Fatalf("info = %+v, want seqs 10..14, 5 records, sealed", info)
	}
	got, rd, err := readAll(t, w.Path())
	if err != nil {
		t.Fatal(err)
	}
	want := []rec{{hrl.TypeWrite, 0, 4096}, {hrl.TypeZero, 4096, 8192}, {hrl.TypeWrite, 12288, 4096},
		{hrl.TypeZero, 1 << 20, 8192}, {hrl.TypeTag, 0, 0}}
	if len(got) != len(want) {
		t.Fatalf("records = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d = %v, want %v", i, got[i], want[i])
		}
	}
	if !rd.Sealed() || rd.Header.Generation != 3 || rd.Header.VolumeID != [16]byte{1, 2, 3} {
		t.Errorf("sealed=%v header=%+v", rd.Sealed(), rd.Header)
	}
	if _, err := w.AppendZero(0, 4096, false); !errors.Is(err, hrl.ErrSealed) {
		t.Errorf("append after seal: err = %v, want ErrSealed", err)
	}
}

func countTypes(t *testing.T, path string) map[hrl.RecordType]int {
	t.Helper()
	recs, _, err := readAll(t, path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[hrl.RecordType]int{}
	for _, r := range recs {
		m[r.typ]++
	}
	return m
}

func TestDedupe(t *testing.T) {
	b := block(9)
	t.Run("same block twice gives WRITE and REF", func(t *testing.T) {
		w := newWriter(t, t.TempDir(), true)
		for _, off := range []uint64{0, 8192} {
			if _, _, err := w.AppendData(hrl.TypeWrite, off, b); err != nil {
				t.Fatal(err)
			}
		}
		got := countTypes(t, w.Path())
		if got[hrl.TypeWrite] != 1 || got[hrl.TypeRef] != 1 || len(got) != 2 {
			t.Fatalf("types = %v, want one WRITE and one REF", got)
		}
		img := replayToBytes(t, w.Path(), 3*4096)
		if !bytes.Equal(img[8192:12288], b) || !bytes.Equal(img[:4096], b) {
			t.Fatal("replayed REF does not reproduce the block")
		}
	})
	t.Run("forced hash collision writes no REF", func(t *testing.T) {
		w := newWriter(t, t.TempDir(), true)
		hrl.SetHashForTest(w, func([]byte) uint64 { return 42 })
		for i, off := range []uint64{0, 8192} {
			if _, _, err := w.AppendData(hrl.TypeWrite, off, block(byte(i+1))); err != nil {
				t.Fatal(err)
			}
		}
		got := countTypes(t, w.Path())
		if got[hrl.TypeWrite] != 2 || got[hrl.TypeRef] != 0 {
			t.Fatalf("types = %v, want two WRITEs and no REF", got)
		}
	})
	t.Run("off", func(t *testing.T) {
		w := newWriter(t, t.TempDir(), false)
		for _, off := range []uint64{0, 8192} {
			if _, _, err := w.AppendData(hrl.TypeWrite, off, b); err != nil {
				t.Fatal(err)
			}
		}
		if got := countTypes(t, w.Path()); got[hrl.TypeWrite] != 2 {
			t.Fatalf("types = %v, want two WRITEs", got)
		}
	})
}

type memImage []byte

func (m memImage) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
func (m memImage) Zero(off, n int64, _ bool) error          { clear(m[off : off+n]); return nil }

func replayToBytes(t *testing.T, path string, size int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	img := make(memImage, size)
	if _, err := hrl.Replay(f, st.Size(), path, img, nil); err != nil {
		t.Fatal(err)
	}
	return img
}

// sealedSegment writes a segment of n random 4 KiB writes and returns its path.
func sealedSegment(t *testing.T, n int, seal bool) string {
	t.Helper()
	w := newWriter(t, t.TempDir(), false)
	for i := range n {
		if _, _, err := w.AppendData(hrl.TypeWrite, uint64(i)*4096, block(byte(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if seal {
		if _, err := w.Seal(); err != nil {
			t.Fatal(err)
		}
	} else if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	return w.Path()
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x40
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptionMidSegment(t *testing.T) {
	recSize := int64(hrl.RecordHeaderSize + 4096)
	for _, tc := range []struct {
		name    string
		off     int64
		wantSeq uint64
	}{
		{"payload of record 3", hrl.HeaderSize + 2*recSize + hrl.RecordHeaderSize + 100, 12},
		{"header of record 2", hrl.HeaderSize + recSize + 9, 11},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := sealedSegment(t, 5, true)
			flip(t, path, tc.off)
			_, _, err := readAll(t, path)
			var ce *hrl.CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *CorruptError", err)
			}
			if ce.File != path || ce.Seq != tc.wantSeq || ce.Offset < hrl.HeaderSize || ce.Offset > tc.off {
				t.Errorf("corrupt error = %+v, want file %s, seq %d, offset <= %d", ce, path, tc.wantSeq, tc.off)
			}
			if !errors.Is(err, hrl.ErrCorrupt) {
				t.Error("not ErrCorrupt")
			}
		})
	}
}

func TestTornTail(t *testing.T) {
	recSize := int64(hrl.RecordHeaderSize + 4096)
	full := hrl.HeaderSize + 4*recSize
	for _, cut := range []int64{full - 1, full - 4096, full - recSize + 10, full - recSize + 1} {
		path := sealedSegment(t, 4, false)
		if err := os.Truncate(path, cut); err != nil {
			t.Fatal(err)
		}
		recs, rd, err := readAll(t, path)
		var te *hrl.TornError
		if !errors.As(err, &te) || len(recs) != 3 || te.Offset != hrl.HeaderSize+3*recSize || te.Seq != 12 {
			t.Errorf("cut at %d: %d records, err %v; want 3 records and a torn tail at %d after seq 12", cut, len(recs), err, hrl.HeaderSize+3*recSize)
		}
		_ = rd
	}
	t.Run("garbage last record", func(t *testing.T) {
		path := sealedSegment(t, 4, false)
		flip(t, path, full-10)
		_, _, err := readAll(t, path)
		if !errors.Is(err, hrl.ErrTornTail) {
			t.Fatalf("err = %v, want torn tail", err)
		}
	})
}

func TestRecoverSealsTornSegment(t *testing.T) {
	path := sealedSegment(t, 4, false)
	st, _ := os.Stat(path)
	os.Truncate(path, st.Size()-100)
	rec, err := hrl.Recover(hrl.OSFS{}, filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Truncated == nil || len(rec.Segments) != 1 || !rec.Segments[0].Sealed || rec.Segments[0].LastSeq != 12 {
		t.Fatalf("recovery = %+v", rec)
	}
	if _, _, err := readAll(t, path); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

// Space reserved for a segment is released when it is sealed.
func TestPreallocatedSpaceReleasedAtSeal(t *testing.T) {
	w, err := hrl.Create(hrl.OSFS{}, t.TempDir(), hrl.Header{FirstSeq: 1}, hrl.WriterConfig{Preallocate: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, _, err := w.AppendData(hrl.TypeWrite, 0, block(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Seal(); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(w.Path(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Fatalf("sealed segment of %d bytes still holds %d bytes of disk", w.Size(), st.Blocks*512)
	}
	if _, _, err := readAll(t, w.Path()); err != nil {
		t.Fatal(err)
	}
}

// In batch mode records wait in memory until FlushPending: a REF can point
// at a block that is not in the file yet (confirmed from memory), and
// nothing reaches the file before the flush.
func TestBatchMode(t *testing.T) {
	dir := t.TempDir()
	w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{FirstSeq: 1}, hrl.WriterConfig{Dedupe: hrl.NewWindow(0), Batch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	b := block(3)
	for _, off := range []uint64{0, 8192} {
		if _, _, err := w.AppendData(hrl.TypeWrite, off, b); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := os.Stat(w.Path()); st.Size() != hrl.HeaderSize || !w.Pending() {
		t.Fatalf("before FlushPending the file has %d bytes (pending=%v), want only the header", st.Size(), w.Pending())
	}
	if err := w.FlushPending(); err != nil {
		t.Fatal(err)
	}
	if got := countTypes(t, w.Path()); got[hrl.TypeWrite] != 1 || got[hrl.TypeRef] != 1 {
		t.Fatalf("types = %v, want one WRITE and one REF", got)
	}
	if img := replayToBytes(t, w.Path(), 3*4096); !bytes.Equal(img[8192:], b) {
		t.Fatal("REF to a batched block does not replay")
	}
}

// RecoverPrefix ends the journal at the first gap (records a tracker held
// in memory and lost) and removes the segments after it; Recover refuses
// the same journal.
func TestRecoverPrefixStopsAtAGap(t *testing.T) {
	dir := t.TempDir()
	seg := func(first uint64, n int, seal bool) {
		w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{FirstSeq: first, Generation: 1}, hrl.WriterConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		for i := range n {
			if _, _, err := w.AppendData(hrl.TypeWrite, uint64(i)*4096, block(byte(i+1))); err != nil {
				t.Fatal(err)
			}
		}
		if seal {
			_, err = w.Seal()
		} else {
			err = w.Sync()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	seg(1, 3, true)  // 1..3
	seg(4, 2, true)  // 4..5
	seg(20, 2, true) // 6..19 were never written here
	seg(22, 1, false)
	if _, err := hrl.Recover(hrl.OSFS{}, dir); !errors.Is(err, hrl.ErrGap) {
		t.Fatalf("Recover of a journal with a gap: %v", err)
	}
	rec, err := hrl.RecoverPrefix(hrl.OSFS{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(rec.Gap, hrl.ErrGap) || len(rec.AfterGap) != 2 || len(rec.Segments) != 2 || rec.Segments[1].LastSeq != 5 {
		t.Fatalf("recovery = %+v", rec)
	}
	seqs, err := hrl.ListSegments(hrl.OSFS{}, dir)
	if err != nil || len(seqs) != 2 || seqs[1] != 4 {
		t.Fatalf("segments left: %v, %v", seqs, err)
	}
	if rec, err = hrl.RecoverPrefix(hrl.OSFS{}, dir); err != nil || rec.Gap != nil || len(rec.Segments) != 2 {
		t.Fatalf("second recovery = %+v, %v", rec, err)
	}
}
