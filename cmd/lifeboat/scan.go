package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"lifeboat/hrl"
)

// The JSON document of `lifeboat journal inspect --output json`. Keys are
// snake_case and only ever added to, never renamed; arrays are [] rather
// than null when empty, so scripts can index them without checks.

// journalReport describes a journal directory or a single segment file.
type journalReport struct {
	Path     string          `json:"path"`     // the FILE or DIR that was inspected
	Segments []segmentReport `json:"segments"` // in seq order
	Gaps     []gapReport     `json:"gaps"`     // continuity breaks between consecutive segments
}

// segmentReport describes one segment file.
type segmentReport struct {
	File     string                `json:"file"`      // path of the segment file
	FileSize int64                 `json:"file_size"` // bytes on disk
	Header   *headerReport         `json:"header"`    // null when the header is unreadable
	Sealed   bool                  `json:"sealed"`    // footer present and verified
	Count    uint64                `json:"count"`     // good records, the footer not included
	FirstSeq uint64                `json:"first_seq"` // from the header
	LastSeq  uint64                `json:"last_seq"`  // last good record; first_seq-1 when empty
	GoodSize int64                 `json:"good_size"` // end of the last good record (or of the footer)
	Checksum checkReport           `json:"checksum"`
	Tags     []tagReport           `json:"tags"`
	Types    map[string]*typeStats `json:"types"`             // by record type: write, zero, ref, resync, tag
	Records  []recordReport        `json:"records,omitempty"` // only with --records
}

// headerReport is the segment header.
type headerReport struct {
	Version    uint16    `json:"version"`
	BlockSize  uint32    `json:"block_size"`
	VolumeID   string    `json:"volume_id"` // UUID
	Generation uint64    `json:"generation"`
	FirstSeq   uint64    `json:"first_seq"`
	Created    time.Time `json:"created"`
}

// Checksum statuses.
const (
	statusOK      = "ok"      // every record and the footer (if any) verify
	statusTorn    = "torn"    // the last record is incomplete: the end of the journal
	statusCorrupt = "corrupt" // damage before the tail; never skipped
)

// checkReport is the verdict of the checksums of one segment.
type checkReport struct {
	Status  string `json:"status"`           // ok, torn or corrupt
	Offset  int64  `json:"offset"`           // torn: where the good part ends; corrupt: byte offset of the damage
	Seq     uint64 `json:"seq"`              // torn: last good seq; corrupt: seq of the damaged record
	Reason  string `json:"reason,omitempty"` // what the reader found
	Message string `json:"message"`          // one line for people
}

// tagReport is a recovery-point marker.
type tagReport struct {
	Seq  uint64    `json:"seq"`
	Kind string    `json:"kind"` // crash, app or group
	Name string    `json:"name"`
	Time time.Time `json:"time"`
}

// typeStats counts the records of one type.
type typeStats struct {
	Records      uint64 `json:"records"`
	Bytes        uint64 `json:"bytes"`         // volume bytes covered
	PayloadBytes uint64 `json:"payload_bytes"` // journal bytes of payload
	TrimRecords  uint64 `json:"trim_records,omitempty"`
}

// recordReport is one record (with --records).
type recordReport struct {
	Seq        uint64     `json:"seq"`
	Type       string     `json:"type"` // WRITE, ZERO, REF, RESYNC, TAG
	Offset     uint64     `json:"offset"`
	Length     uint64     `json:"length"`
	Flags      uint8      `json:"flags"`       // bit 0: trim (on ZERO)
	FileOffset int64      `json:"file_offset"` // where the record header starts in the segment
	Ref        *refReport `json:"ref,omitempty"`
}

// refReport is where a REF record's bytes come from.
type refReport struct {
	SourceSeq     uint64 `json:"source_seq"`
	SegmentOffset uint64 `json:"segment_offset"`
}

// gapReport is a continuity break between two consecutive segments.
type gapReport struct {
	After   string `json:"after"` // file of the earlier segment
	Next    string `json:"next"`  // file of the later segment
	Message string `json:"message"`
}

// inspectPath inspects a segment file or every segment of a journal
// directory. Unreadable input is a usage error (exit 2); damage in the
// journal is reported, not returned.
func inspectPath(path string, records bool) (journalReport, error) {
	rep := journalReport{Path: path, Segments: []segmentReport{}, Gaps: []gapReport{}}
	st, err := os.Stat(path)
	if err != nil {
		return rep, usageError("%v; pass a journal segment (.hrl) or the journal directory of a volume", err)
	}
	var files []string
	if st.IsDir() {
		seqs, err := hrl.ListSegments(hrl.OSFS{}, path)
		if err != nil {
			return rep, usageError("%v; check the path and your permissions", err)
		}
		for _, s := range seqs {
			files = append(files, filepath.Join(path, hrl.SegmentName(s)))
		}
	} else {
		files = []string{path}
	}
	for i, f := range files {
		seg, err := inspectSegment(f, records)
		if err != nil {
			return rep, usageError("%v; check that the file is readable", err)
		}
		if i > 0 {
			if prev := rep.Segments[i-1]; prev.Checksum.Status == statusOK && prev.Header != nil && seg.Header != nil {
				if err := hrl.CheckContinuity(prev.info(), seg.info()); err != nil {
					rep.Gaps = append(rep.Gaps, gapReport{After: prev.File, Next: seg.File, Message: err.Error()})
				}
			}
		}
		rep.Segments = append(rep.Segments, seg)
	}
	return rep, nil
}

// info converts the report for hrl.CheckContinuity.
func (s *segmentReport) info() hrl.SegmentInfo {
	return hrl.SegmentInfo{Path: s.File, Generation: s.Header.Generation, FirstSeq: s.FirstSeq,
		LastSeq: s.LastSeq, Count: s.Count, Size: s.GoodSize, Sealed: s.Sealed, Created: s.Header.Created}
}

// inspectSegment reads one segment record by record. Only I/O errors are
// returned; torn tails and corruption are recorded in Checksum.
func inspectSegment(path string, records bool) (segmentReport, error) {
	f, err := hrl.OSFS{}.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return segmentReport{File: path}, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return segmentReport{File: path}, fmt.Errorf("size of %s: %w", path, err)
	}
	return inspectReader(f, size, path, records)
}

// inspectReader is inspectSegment on any reader; path names the segment.
func inspectReader(r io.ReaderAt, size int64, path string, records bool) (segmentReport, error) {
	seg := segmentReport{File: path, FileSize: size, Tags: []tagReport{}, Types: map[string]*typeStats{},
		Checksum: checkReport{Status: statusOK, Message: "ok"}}
	rd, err := hrl.NewReader(r, size, path)
	if err != nil {
		return seg, seg.setProblem(err)
	}
	h := rd.Header
	seg.Header = &headerReport{Version: h.Version, BlockSize: h.BlockSize, VolumeID: uuid.UUID(h.VolumeID).String(),
		Generation: h.Generation, FirstSeq: h.FirstSeq, Created: h.Created}
	seg.FirstSeq = h.FirstSeq
	for {
		rec, err := rd.Next()
		if err != nil {
			seg.Sealed, seg.Count, seg.LastSeq, seg.GoodSize = rd.Sealed(), rd.Count(), rd.LastSeq(), rd.Offset()
			if !errors.Is(err, io.EOF) {
				if err := seg.setProblem(err); err != nil {
					return seg, err
				}
			}
			break
		}
		seg.add(rec, records)
	}
	if nameSeq, ok := hrl.ParseSegmentName(filepath.Base(path)); ok && nameSeq != h.FirstSeq && seg.Checksum.Status != statusCorrupt {
		seg.setCorrupt(0, h.FirstSeq, fmt.Sprintf("header says first seq %d, file name says %d", h.FirstSeq, nameSeq))
	}
	return seg, nil
}

// add accounts one good record.
func (s *segmentReport) add(rec *hrl.Record, records bool) {
	name := strings.ToLower(rec.Type.String())
	ts := s.Types[name]
	if ts == nil {
		ts = &typeStats{}
		s.Types[name] = ts
	}
	ts.Records++
	ts.Bytes += rec.Length
	ts.PayloadBytes += uint64(rec.PayloadLen)
	if rec.Type == hrl.TypeZero && rec.Flags&hrl.FlagTrim != 0 {
		ts.TrimRecords++
	}
	if rec.Type == hrl.TypeTag {
		if t, err := hrl.DecodeTag(rec.Payload); err == nil { // the reader checked it
			s.Tags = append(s.Tags, tagReport{Seq: rec.Seq, Kind: t.Kind.String(), Name: t.Name, Time: t.Time})
		}
	}
	if !records {
		return
	}
	r := recordReport{Seq: rec.Seq, Type: rec.Type.String(), Offset: rec.Offset, Length: rec.Length,
		Flags: rec.Flags, FileOffset: rec.HeaderOffset}
	if rec.Type == hrl.TypeRef {
		if ref, err := hrl.DecodeRef(rec.Payload); err == nil {
			r.Ref = &refReport{SourceSeq: ref.SourceSeq, SegmentOffset: ref.SegmentOffset}
		}
	}
	s.Records = append(s.Records, r)
}

// setProblem records a torn tail or corruption; other errors (I/O) are
// returned.
func (s *segmentReport) setProblem(err error) error {
	var torn *hrl.TornError
	var bad *hrl.CorruptError
	switch {
	case errors.As(err, &torn):
		s.Checksum = checkReport{Status: statusTorn, Offset: torn.Offset, Seq: torn.Seq, Reason: torn.Reason,
			Message: fmt.Sprintf("torn tail at byte offset %d after seq %d (%s)", torn.Offset, torn.Seq, torn.Reason)}
	case errors.As(err, &bad):
		s.setCorrupt(bad.Offset, bad.Seq, bad.Reason)
	default:
		return err
	}
	return nil
}

func (s *segmentReport) setCorrupt(off int64, seq uint64, reason string) {
	s.Checksum = checkReport{Status: statusCorrupt, Offset: off, Seq: seq, Reason: reason,
		Message: fmt.Sprintf("CORRUPT at byte offset %d (seq %d): %s", off, seq, reason)}
}

// typeOrder is the order record types are listed in.
var typeOrder = []string{"write", "zero", "ref", "resync", "tag"}

// totalStats adds up the type counts of every segment.
func (r *journalReport) totalStats() map[string]*typeStats {
	tot := map[string]*typeStats{}
	for _, s := range r.Segments {
		for k, v := range s.Types {
			t := tot[k]
			if t == nil {
				t = &typeStats{}
				tot[k] = t
			}
			t.Records += v.Records
			t.Bytes += v.Bytes
			t.PayloadBytes += v.PayloadBytes
			t.TrimRecords += v.TrimRecords
		}
	}
	return tot
}
