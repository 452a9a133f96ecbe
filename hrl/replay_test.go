package hrl_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
)

// call is one call a recordingSink got: an Apply (exts) or a Tag (tag).
type call struct {
	exts []hrl.Extent
	tag  uint64
}

// recordingSink keeps copies of what a replay hands it.
type recordingSink struct{ calls []call }

func (s *recordingSink) Apply(exts []hrl.Extent) error {
	c := call{}
	for _, e := range exts {
		e.Data = bytes.Clone(e.Data)
		c.exts = append(c.exts, e)
	}
	s.calls = append(s.calls, c)
	return nil
}

func (s *recordingSink) Tag(seq uint64, _ hrl.Tag) error {
	s.calls = append(s.calls, call{tag: seq})
	return nil
}

// String lists the calls as "W off+len", "Z off+len", "T off+len" (trim)
// per extent, "|" between Apply calls and "tag N" for tags.
func (s *recordingSink) String() string {
	var b bytes.Buffer
	for _, c := range s.calls {
		if c.exts == nil {
			fmt.Fprintf(&b, "tag %d|", c.tag)
			continue
		}
		for _, e := range c.exts {
			k := "W"
			switch {
			case e.Data == nil && e.Trim:
				k = "T"
			case e.Data == nil:
				k = "Z"
			}
			fmt.Fprintf(&b, "%s %d+%d ", k, e.Off, e.Len)
		}
		b.WriteString("|")
	}
	return b.String()
}

// mixedSegment has seqs 1..7: WRITE 8 KiB at 0, ZERO 4 KiB at 16 KiB,
// TAG, WRITE 4 KiB at 32 KiB (a REF of the first block), TRIM 8 KiB at
// 64 KiB, TAG, WRITE 4 KiB at 128 KiB (a REF of the second block).
func mixedSegment(t testing.TB) []byte {
	a, c := block(1), block(2)
	dir := t.TempDir()
	w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{FirstSeq: 1, Generation: 1}, hrl.WriterConfig{Dedupe: hrl.NewWindow(0)})
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error {
			_, _, err := w.AppendData(hrl.TypeWrite, 0, append(append([]byte{}, a...), c...))
			return err
		},
		func() error { _, err := w.AppendZero(16<<10, 4096, false); return err },
		func() error { _, err := w.AppendTag(hrl.Tag{Kind: hrl.TagCrash, Name: "one"}); return err },
		func() error { _, _, err := w.AppendData(hrl.TypeWrite, 32<<10, a); return err },
		func() error { _, err := w.AppendZero(64<<10, 8192, true); return err },
		func() error { _, err := w.AppendTag(hrl.Tag{Kind: hrl.TagApp, Name: "two"}); return err },
		func() error { _, _, err := w.AppendData(hrl.TypeWrite, 128<<10, c); return err },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Seal(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	if got := countTypesBytes(t, data); got[hrl.TypeRef] != 2 {
		t.Fatalf("test segment has types %v, want two REFs", got)
	}
	return data
}

func countTypesBytes(t testing.TB, data []byte) map[hrl.RecordType]int {
	rd, err := hrl.NewBytesReader(data, "seg")
	if err != nil {
		t.Fatal(err)
	}
	m := map[hrl.RecordType]int{}
	for {
		rec, err := rd.Next()
		if err != nil {
			return m
		}
		m[rec.Type]++
	}
}

func TestSegmentReplay(t *testing.T) {
	data := mixedSegment(t)
	for _, tc := range []struct {
		name      string
		p         hrl.SegmentReplay
		want      string // in memory: batches between tags
		wantAt    string // through an io.ReaderAt: one record per Apply
		wantLast  uint64
		wantCount uint64
	}{
		{name: "whole", p: hrl.SegmentReplay{},
			want:     "W 0+8192 Z 16384+4096 |tag 3|W 32768+4096 T 65536+8192 |tag 6|W 131072+4096 |",
			wantAt:   "W 0+8192 |Z 16384+4096 |tag 3|W 32768+4096 |T 65536+8192 |tag 6|W 131072+4096 |",
			wantLast: 7, wantCount: 7},
		{name: "max extent", p: hrl.SegmentReplay{MaxExtent: 4096},
			want:     "W 0+4096 W 4096+4096 Z 16384+4096 |tag 3|W 32768+4096 T 65536+4096 T 69632+4096 |tag 6|W 131072+4096 |",
			wantAt:   "W 0+4096 W 4096+4096 |Z 16384+4096 |tag 3|W 32768+4096 |T 65536+4096 T 69632+4096 |tag 6|W 131072+4096 |",
			wantLast: 7, wantCount: 7},
		{name: "after the first tag", p: hrl.SegmentReplay{After: 3},
			want:     "W 32768+4096 T 65536+8192 |tag 6|W 131072+4096 |",
			wantAt:   "W 32768+4096 |T 65536+8192 |tag 6|W 131072+4096 |",
			wantLast: 7, wantCount: 7},
		{name: "end before the second tag", p: hrl.SegmentReplay{End: 6},
			want:     "W 0+8192 Z 16384+4096 |tag 3|W 32768+4096 T 65536+8192 |",
			wantAt:   "W 0+8192 |Z 16384+4096 |tag 3|W 32768+4096 |T 65536+8192 |",
			wantLast: 5, wantCount: 5},
		{name: "everything applied before", p: hrl.SegmentReplay{After: 7}, want: "", wantAt: "", wantLast: 7, wantCount: 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mode := range []string{"bytes", "readerat"} {
				var s recordingSink
				p := tc.p
				var info hrl.SegmentInfo
				var err error
				want := tc.want
				if mode == "bytes" {
					info, err = p.Bytes(data, "seg", &s)
				} else {
					info, err = p.ReaderAt(bytes.NewReader(data), int64(len(data)), "seg", &s)
					want = tc.wantAt
				}
				if err != nil {
					t.Fatalf("%s: %v", mode, err)
				}
				if got := s.String(); got != want {
					t.Errorf("%s: calls\n got %s\nwant %s", mode, got, want)
				}
				if info.LastSeq != tc.wantLast || info.Count != tc.wantCount {
					t.Errorf("%s: last seq %d, count %d; want %d, %d", mode, info.LastSeq, info.Count, tc.wantLast, tc.wantCount)
				}
				for _, c := range s.calls {
					for _, e := range c.exts {
						if e.Data != nil && int64(len(e.Data)) != e.Len {
							t.Errorf("%s: extent at %d has %d bytes of data, length %d", mode, e.Off, len(e.Data), e.Len)
						}
						if e.Off == 32768 && !bytes.Equal(e.Data, block(1)) {
							t.Errorf("%s: REF resolved to the wrong bytes", mode)
						}
					}
				}
			}
		})
	}
}

// TestSegmentReplayRefHash: a REF whose source bytes no longer match its
// hash is corruption in both modes (the reader cannot see it: the source
// record's own checksum covers the block hashes, not this one).
func TestSegmentReplayRefHash(t *testing.T) {
	data := mixedSegment(t)
	// Find the REF and point its hash elsewhere: re-encode the record.
	rd, err := hrl.NewBytesReader(data, "seg")
	if err != nil {
		t.Fatal(err)
	}
	for {
		rec, err := rd.Next()
		if err != nil {
			t.Fatal("no REF found")
		}
		if rec.Type == hrl.TypeRef {
			bad := bytes.Clone(data)
			p := bad[rec.PayloadOffset : rec.PayloadOffset+24]
			p[16] ^= 1 // the source hash
			h := rec.RecordHeader
			h.PayloadSum = xxhashSum(p)
			hrl.MarshalRecordHeader(bad[rec.HeaderOffset:], &h)
			reseal(t, bad)
			var p1, p2 hrl.SegmentReplay
			_, err1 := p1.Bytes(bad, "seg", &recordingSink{})
			_, err2 := p2.ReaderAt(bytes.NewReader(bad), int64(len(bad)), "seg", &recordingSink{})
			for _, err := range []error{err1, err2} {
				if !isCorrupt(err) || !bytes.Contains([]byte(err.Error()), []byte("REF source bytes hash")) {
					t.Errorf("err = %v, want a corrupt REF", err)
				}
			}
			return
		}
	}
}

// TestBytesReaderAliases: payloads are the segment's own bytes.
func TestBytesReaderAliases(t *testing.T) {
	data := mixedSegment(t)
	rd, err := hrl.NewBytesReader(data, "seg")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		rec, err := rd.Next()
		if err != nil {
			break
		}
		if len(rec.Payload) == 0 {
			continue
		}
		if unsafe.SliceData(rec.Payload) != &data[rec.PayloadOffset] {
			t.Errorf("seq %d: payload is a copy", rec.Seq)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no payloads")
	}
}

func xxhashSum(b []byte) uint64 { return xxhash.Sum64(b) }

func isCorrupt(err error) bool { return errors.Is(err, hrl.ErrCorrupt) }

// reseal recomputes the footer of a sealed segment whose record headers
// were re-encoded, so that only the change made shows.
func reseal(t *testing.T, seg []byte) {
	t.Helper()
	chain := xxhash.New()
	chain.Write(seg[56:64])
	off, count := int64(hrl.HeaderSize), uint64(0)
	for {
		h, err := hrl.UnmarshalRecordHeader(seg[off : off+hrl.RecordHeaderSize])
		if err != nil {
			t.Fatal(err)
		}
		if h.Type == hrl.TypeFooter {
			p := seg[off+hrl.RecordHeaderSize : off+hrl.RecordHeaderSize+16]
			binary.LittleEndian.PutUint64(p[0:], count)
			binary.LittleEndian.PutUint64(p[8:], chain.Sum64())
			h.PayloadSum = xxhash.Sum64(p)
			hrl.MarshalRecordHeader(seg[off:], &h)
			return
		}
		chain.Write(seg[off+40 : off+48])
		count++
		off += hrl.RecordHeaderSize + int64(h.PayloadLen)
	}
}

// nopSink discards what it gets.
type nopSink struct{}

func (nopSink) Apply([]hrl.Extent) error  { return nil }
func (nopSink) Tag(uint64, hrl.Tag) error { return nil }

// manyRecords is a sealed segment of n 4 KiB WRITE records and a ZERO
// after each: every record is read in a scan.
func manyRecords(tb testing.TB, n int) []byte {
	data, err := hrltest.UniqueBlocks(n*4096, "allocs")
	if err != nil {
		tb.Fatal(err)
	}
	return hrltest.Segment(tb, hrl.Header{FirstSeq: 1, Generation: 1}, func(w *hrl.Writer) error {
		for i := range n {
			if _, _, err := w.AppendData(hrl.TypeWrite, uint64(i)*8192, data[i*4096:(i+1)*4096]); err != nil {
				return err
			}
			if _, err := w.AppendZero(uint64(i)*8192+4096, 4096, i%2 == 0); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestBytesReaderAllocs: reading and replaying a segment in memory
// allocates nothing per record, nor per segment once the buffers are warm.
func TestBytesReaderAllocs(t *testing.T) {
	data := manyRecords(t, 256)
	var rd hrl.Reader
	scan := func() {
		if err := rd.ResetBytes(data, "seg"); err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := rd.Next(); err != nil {
				if !rd.Sealed() || rd.Count() != 512 {
					t.Fatalf("stopped at %d records: %v", rd.Count(), err)
				}
				return
			}
		}
	}
	if n := testing.AllocsPerRun(20, scan); n != 0 {
		t.Errorf("scan of 512 records: %v allocations, want 0", n)
	}
	var p hrl.SegmentReplay
	replay := func() {
		if _, err := p.Bytes(data, "seg", nopSink{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(20, replay); n != 0 {
		t.Errorf("replay of 512 records: %v allocations, want 0", n)
	}
}

// BenchmarkRead compares reading a 32 MiB segment of 1 MiB WRITE records
// from memory and through an io.ReaderAt (the copy the former saves).
func BenchmarkRead(b *testing.B) {
	data, err := hrltest.UniqueBlocks(32<<20, "read")
	if err != nil {
		b.Fatal(err)
	}
	seg := hrltest.Segment(b, hrl.Header{FirstSeq: 1, Generation: 1}, func(w *hrl.Writer) error {
		for off := 0; off < len(data); off += 1 << 20 {
			if _, _, err := w.AppendData(hrl.TypeWrite, uint64(off), data[off:off+1<<20]); err != nil {
				return err
			}
		}
		return nil
	})
	for _, mode := range []string{"bytes", "readerat"} {
		b.Run(mode, func(b *testing.B) {
			var rd hrl.Reader
			b.SetBytes(int64(len(seg)))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if mode == "bytes" {
					err = rd.ResetBytes(seg, "seg")
				} else {
					err = rd.Reset(bytes.NewReader(seg), int64(len(seg)), "seg")
				}
				for err == nil {
					_, err = rd.Next()
				}
				if !rd.Sealed() {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestUnsealedEndsInZero: a complete ZERO record (no payload) at the very
// end of an unsealed segment is a record, not the end of the file, through
// an io.ReaderAt as in memory. (bytes.Reader says io.EOF for an empty
// read at the end, which used to end the scan before the record.)
func TestUnsealedEndsInZero(t *testing.T) {
	dir := t.TempDir()
	w := newWriter(t, dir, false)
	if _, _, err := w.AppendData(hrl.TypeWrite, 0, block(3)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AppendZero(8192, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for name, scan := range map[string]func() (hrl.SegmentInfo, error){
		"file": func() (hrl.SegmentInfo, error) { return hrl.Scan(f, int64(len(data)), "seg") },
		"bytes.Reader": func() (hrl.SegmentInfo, error) {
			return hrl.Scan(bytes.NewReader(data), int64(len(data)), "seg")
		},
		"memory": func() (hrl.SegmentInfo, error) { return hrl.ScanBytes(data, "seg") },
	} {
		info, err := scan()
		if err != nil || info.Count != 2 || info.Sealed || info.Size != int64(len(data)) {
			t.Errorf("%s: %+v, %v; want 2 records up to byte %d, unsealed", name, info, err, len(data))
		}
	}
}
