package hrl_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"lifeboat/hrl"
)

// validSegment builds a small sealed segment with every record type.
func validSegment(f *testing.F) []byte {
	f.Helper()
	dir := f.TempDir()
	w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{FirstSeq: 1, Generation: 1}, hrl.WriterConfig{Dedupe: hrl.NewWindow(0)})
	if err != nil {
		f.Fatal(err)
	}
	b := bytes.Repeat([]byte("lifeboat"), 512)
	w.AppendData(hrl.TypeWrite, 0, b)
	w.AppendData(hrl.TypeWrite, 8192, append(append([]byte{}, b...), make([]byte, 4096)...))
	w.AppendData(hrl.TypeResync, 1<<20, b)
	w.AppendZero(4096, 4096, true)
	w.AppendTag(hrl.Tag{Kind: hrl.TagCrash, Name: "fuzz"})
	if _, err := w.Seal(); err != nil {
		f.Fatal(err)
	}
	data, err := os.ReadFile(w.Path())
	if err != nil {
		f.Fatal(err)
	}
	return data
}

// boundedImage is a Replayer that refuses writes outside its size instead
// of growing, so fuzzed offsets cannot exhaust memory.
type boundedImage []byte

var errOutside = errors.New("outside image")

func (m boundedImage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(m)) || int64(len(p)) > int64(len(m))-off {
		return 0, errOutside
	}
	return copy(m[off:], p), nil
}

func (m boundedImage) Zero(off, n int64, _ bool) error {
	if off < 0 || n < 0 || off > int64(len(m)) || n > int64(len(m))-off {
		return errOutside
	}
	clear(m[off : off+n])
	return nil
}

// FuzzSegment feeds arbitrary bytes to the segment decoder and to Replay:
// no panic, and every failure is end-of-journal, a torn tail or corruption
// (or a replay target refusing an out-of-range write), never anything else.
// The reader over an io.ReaderAt and the one over the bytes in memory must
// agree on every record and on the error, and so must Replay and a
// SegmentReplay of the bytes (batched between tags).
func FuzzSegment(f *testing.F) {
	seg := validSegment(f)
	f.Add(seg)
	f.Add(seg[:len(seg)-10])
	f.Add(seg[:hrl.HeaderSize+20])
	mid := append([]byte(nil), seg...)
	mid[hrl.HeaderSize+hrl.RecordHeaderSize+7] ^= 1
	f.Add(mid)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		rd, err := hrl.NewReader(r, int64(len(data)), "fuzz.hrl")
		mrd, merr := hrl.NewBytesReader(data, "fuzz.hrl")
		if fmt.Sprint(err) != fmt.Sprint(merr) {
			t.Fatalf("NewReader: %v, NewBytesReader: %v", err, merr)
		}
		if err != nil {
			if !errors.Is(err, hrl.ErrCorrupt) && !errors.Is(err, hrl.ErrTornTail) {
				t.Fatalf("NewReader: unexpected error class: %v", err)
			}
			return
		}
		n := 0
		for {
			rec, err := rd.Next()
			mrec, merr := mrd.Next()
			if fmt.Sprint(err) != fmt.Sprint(merr) {
				t.Fatalf("record %d: Next %v, from memory %v", n, err, merr)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, hrl.ErrCorrupt) && !errors.Is(err, hrl.ErrTornTail) {
					t.Fatalf("Next: unexpected error class: %v", err)
				}
				break
			}
			n++
			if rec.PayloadOffset+int64(len(rec.Payload)) > int64(len(data)) {
				t.Fatalf("record seq %d payload past the end", rec.Seq)
			}
			if rec.RecordHeader != mrec.RecordHeader || rec.HeaderOffset != mrec.HeaderOffset ||
				rec.PayloadOffset != mrec.PayloadOffset || !bytes.Equal(rec.Payload, mrec.Payload) {
				t.Fatalf("record %d differs: %+v from memory %+v", n, rec.RecordHeader, mrec.RecordHeader)
			}
		}
		if uint64(n) != rd.Count() || rd.Offset() > int64(len(data)) {
			t.Fatalf("count %d vs %d, offset %d of %d", n, rd.Count(), rd.Offset(), len(data))
		}
		if rd.Info() != mrd.Info() {
			t.Fatalf("info %+v, from memory %+v", rd.Info(), mrd.Info())
		}
		img := make(boundedImage, 2<<20)
		info, err := hrl.Replay(r, int64(len(data)), "fuzz.hrl", img, nil)
		if err != nil && !errors.Is(err, hrl.ErrCorrupt) && !errors.Is(err, hrl.ErrTornTail) && !errors.Is(err, errOutside) {
			t.Fatalf("Replay: unexpected error class: %v", err)
		}
		if errors.Is(err, errOutside) {
			return // the batched replay stops at another record
		}
		mimg := make(boundedImage, 2<<20)
		var p hrl.SegmentReplay
		minfo, merr := p.Bytes(data, "fuzz.hrl", imageSink{mimg})
		if fmt.Sprint(err) != fmt.Sprint(merr) || info != minfo {
			t.Fatalf("Replay: %v %+v; from memory: %v %+v", err, info, merr, minfo)
		}
		if err == nil && !bytes.Equal(img, mimg) {
			t.Fatal("Replay and the replay from memory give different images")
		}
	})
}

// imageSink applies extents to an image.
type imageSink struct{ img boundedImage }

func (s imageSink) Apply(exts []hrl.Extent) error {
	for _, e := range exts {
		if e.Data == nil {
			if err := s.img.Zero(e.Off, e.Len, e.Trim); err != nil {
				return err
			}
		} else if _, err := s.img.WriteAt(e.Data, e.Off); err != nil {
			return err
		}
	}
	return nil
}

func (imageSink) Tag(uint64, hrl.Tag) error { return nil }

// FuzzRecordHeader: the record decoder never panics, and whatever it
// accepts re-encodes to the same bytes.
func FuzzRecordHeader(f *testing.F) {
	seg := validSegment(f)
	for off := hrl.HeaderSize; off+hrl.RecordHeaderSize <= len(seg) && off < 400; off += 8 {
		f.Add(seg[off : off+hrl.RecordHeaderSize])
	}
	f.Add(make([]byte, hrl.RecordHeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := hrl.UnmarshalRecordHeader(b)
		if err != nil {
			return
		}
		out := make([]byte, hrl.RecordHeaderSize)
		hrl.MarshalRecordHeader(out, &h)
		if !bytes.Equal(out, b[:hrl.RecordHeaderSize]) {
			t.Fatalf("re-encoded header differs:\n got %x\nwant %x", out, b[:hrl.RecordHeaderSize])
		}
		switch h.Type {
		case hrl.TypeWrite, hrl.TypeResync, hrl.TypeZero, hrl.TypeRef, hrl.TypeTag, hrl.TypeFooter:
		default:
			t.Fatalf("accepted unknown type %d", h.Type)
		}
	})
}

// FuzzPayloads: the TAG and REF payload decoders never panic, and a decoded
// TAG re-encodes to the same bytes.
func FuzzPayloads(f *testing.F) {
	f.Add([]byte{1, 0, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 'n', 'a', 'm', 'e'})
	f.Add(make([]byte, 24))
	f.Fuzz(func(t *testing.T, p []byte) {
		hrl.DecodeRef(p)
		tag, err := hrl.DecodeTag(p)
		if err != nil {
			return
		}
		if tag.Name != string(p[12:]) {
			t.Fatalf("tag name %q from %x", tag.Name, p)
		}
	})
}

// FuzzHeader: the segment header decoder never panics and round-trips.
func FuzzHeader(f *testing.F) {
	seg := validSegment(f)
	f.Add(seg[:hrl.HeaderSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := hrl.UnmarshalHeader(b)
		if err != nil {
			return
		}
		out := make([]byte, hrl.HeaderSize)
		hrl.MarshalHeader(out, h)
		if !bytes.Equal(out, b[:hrl.HeaderSize]) {
			t.Fatalf("re-encoded header differs")
		}
	})
}
