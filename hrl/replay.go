package hrl

import (
	"errors"
	"fmt"
	"io"
)

// This file is the one replay of journal records: the process server's
// applier, Replay and ReplayUntil (what the tests and tools use) all walk a
// segment through SegmentReplay, so the tests check the replay production
// runs.

// Extent is one change a replay hands to a Sink: Data is the new content
// of [Off, Off+Len), or nil when the range reads as zeros afterwards; Trim
// says such a range was discarded rather than written with zeros.
type Extent struct {
	Off  int64
	Len  int64
	Data []byte
	Trim bool
}

// Sink receives the effect of a segment's records from a SegmentReplay, in
// seq order.
type Sink interface {
	// Apply applies extents in order (a later one wins where they
	// overlap). The slice is reused after Apply returns; so is the Data of
	// its extents when the segment is read through an io.ReaderAt.
	Apply(exts []Extent) error
	// Tag is called at each TAG record, after every extent before it went
	// to Apply.
	Tag(seq uint64, t Tag) error
}

// SegmentReplay replays segments into a Sink: it reads and verifies every
// record (as Reader does), resolves REF records against the segment and
// checks the hash of their source bytes, and hands the sink the records'
// extents and tags in seq order. A segment in memory (Bytes) is handed over
// in batches, everything between two tags in one Apply call, with Data
// aliasing the segment's bytes; through an io.ReaderAt (ReaderAt), one
// record per Apply call. A replay that fails leaves the records after the
// last Apply call unapplied.
//
// A SegmentReplay keeps its buffers between segments: replaying segment
// after segment from memory with one allocates nothing per record (a TAG's
// name is a new string).
type SegmentReplay struct {
	// After: records with a seq at or below it are read and verified but
	// not applied (they were applied before).
	After uint64
	// End: the replay stops before the record with this seq, which is not
	// read; 0 replays to the end of the segment.
	End uint64
	// MaxExtent splits longer extents into pieces of at most this many
	// bytes (a target's largest write); 0 leaves them whole.
	MaxExtent int64

	rd       Reader
	inMemory bool
	exts     []Extent
	first    uint64       // seq of the first record in exts
	last     RecordHeader // the last record in exts
	ref      []byte       // REF source bytes read through an io.ReaderAt
}

// Bytes replays the segment in data. The returned info describes the part
// read; its LastSeq is the last record applied or skipped. A torn tail
// stops the replay after the last good record and is returned as a
// *TornError, corruption as a *CorruptError.
func (p *SegmentReplay) Bytes(data []byte, name string, sink Sink) (SegmentInfo, error) {
	if err := p.rd.ResetBytes(data, name); err != nil {
		return SegmentInfo{Path: name}, err
	}
	p.inMemory = true
	return p.run(sink)
}

// ReaderAt replays the segment of size bytes in r (see Bytes).
func (p *SegmentReplay) ReaderAt(r io.ReaderAt, size int64, name string, sink Sink) (SegmentInfo, error) {
	if err := p.rd.Reset(r, size, name); err != nil {
		return SegmentInfo{Path: name}, err
	}
	p.inMemory = false
	return p.run(sink)
}

// Header is the header of the segment being replayed, or replayed last.
func (p *SegmentReplay) Header() Header { return p.rd.Header }

func (p *SegmentReplay) run(sink Sink) (SegmentInfo, error) {
	rd := &p.rd
	defer func() { clear(p.exts); p.exts = p.exts[:0] }()
	p.exts = p.exts[:0]
	for p.End == 0 || rd.next < p.End {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rd.Info(), err
		}
		if rec.Seq <= p.After {
			continue
		}
		if err := p.record(rec, sink); err != nil {
			return rd.Info(), err
		}
		if !p.inMemory {
			// The reader reuses the payload buffer for the next record.
			if err := p.flush(sink); err != nil {
				return rd.Info(), err
			}
		}
	}
	if err := p.flush(sink); err != nil {
		return rd.Info(), err
	}
	return rd.Info(), nil
}

// record adds the extents of rec to the batch, or passes on its tag.
func (p *SegmentReplay) record(rec *Record, sink Sink) error {
	off := int64(rec.Offset)
	switch rec.Type {
	case TypeWrite, TypeResync:
		p.add(rec, off, int64(rec.Length), rec.Payload, false)
	case TypeZero:
		p.add(rec, off, int64(rec.Length), nil, rec.Flags&FlagTrim != 0)
	case TypeRef:
		src, err := p.refSource(rec)
		if err != nil {
			return err
		}
		p.add(rec, off, int64(rec.Length), src, false)
	case TypeTag:
		t, err := DecodeTag(rec.Payload) // checked by the reader
		if err == nil {
			err = p.flush(sink)
		}
		if err == nil {
			err = sink.Tag(rec.Seq, t)
		}
		if err != nil {
			return fmt.Errorf("replay %s seq %d (TAG): %w", p.rd.name, rec.Seq, err)
		}
	}
	return nil
}

// add appends the extents of one record, each at most MaxExtent long.
func (p *SegmentReplay) add(rec *Record, off, n int64, data []byte, trim bool) {
	if len(p.exts) == 0 {
		p.first = rec.Seq
	}
	p.last = rec.RecordHeader
	for n > 0 {
		l := n
		if p.MaxExtent > 0 {
			l = min(n, p.MaxExtent)
		}
		e := Extent{Off: off, Len: l, Trim: trim}
		if data != nil {
			e.Data, data = data[:l:l], data[l:]
		}
		p.exts = append(p.exts, e)
		off, n = off+l, n-l
	}
}

// refSource returns the bytes a REF record stands for, after checking them
// against the hash the REF carries. The reader checked that they lie
// inside the records before the REF.
func (p *SegmentReplay) refSource(rec *Record) ([]byte, error) {
	ref, _ := DecodeRef(rec.Payload) // checked by the reader
	src, err := p.rd.bytes(int64(ref.SegmentOffset), int(rec.Length), &p.ref)
	if err != nil {
		return nil, err
	}
	if got := hashSum(src); got != ref.Sum {
		return nil, &CorruptError{File: p.rd.name, Offset: rec.HeaderOffset, Seq: rec.Seq,
			Reason: fmt.Sprintf("REF source bytes hash %016x, want %016x", got, ref.Sum)}
	}
	return src, nil
}

// flush hands the batch to the sink.
func (p *SegmentReplay) flush(sink Sink) error {
	if len(p.exts) == 0 {
		return nil
	}
	err := sink.Apply(p.exts)
	clear(p.exts)
	p.exts = p.exts[:0]
	if err == nil {
		return nil
	}
	if last := &p.last; p.first == last.Seq {
		return fmt.Errorf("replay %s seq %d (%s at %d): %w", p.rd.name, last.Seq, last.Type, last.Offset, err)
	}
	return fmt.Errorf("replay %s seqs %d..%d: %w", p.rd.name, p.first, p.last.Seq, err)
}

// Replayer receives the effect of records in order. WriteAt gets the content
// of WRITE, RESYNC and resolved REF records; Zero gets ZERO records.
type Replayer interface {
	WriteAt(p []byte, off int64) (int, error)
	Zero(off, n int64, trim bool) error
}

// Replay applies the records of one segment to dst in seq order, resolving
// REF records against the segment itself and checking their checksums, and
// calls onTag (if not nil) at every TAG with everything before it applied.
// A torn tail stops the replay after the last good record and is returned as
// a *TornError.
func Replay(r io.ReaderAt, size int64, name string, dst Replayer, onTag func(seq uint64, t Tag) error) (SegmentInfo, error) {
	var p SegmentReplay
	return p.ReaderAt(r, size, name, replayerSink{dst, onTag})
}

// ReplayUntil is Replay that stops after the record with seq lastSeq; the
// returned LastSeq is the last record applied.
func ReplayUntil(r io.ReaderAt, size int64, name string, dst Replayer, lastSeq uint64, onTag func(seq uint64, t Tag) error) (SegmentInfo, error) {
	p := SegmentReplay{End: lastSeq + 1} // MaxUint64 wraps to 0: to the end
	return p.ReaderAt(r, size, name, replayerSink{dst, onTag})
}

// replayerSink adapts a Replayer and a tag callback to a Sink.
type replayerSink struct {
	dst   Replayer
	onTag func(seq uint64, t Tag) error
}

func (s replayerSink) Apply(exts []Extent) error {
	for _, e := range exts {
		var err error
		if e.Data != nil {
			_, err = s.dst.WriteAt(e.Data, e.Off)
		} else {
			err = s.dst.Zero(e.Off, e.Len, e.Trim)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s replayerSink) Tag(seq uint64, t Tag) error {
	if s.onTag == nil {
		return nil
	}
	return s.onTag(seq, t)
}
