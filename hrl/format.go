// Package hrl implements the Lifeboat journal: append-only segment files of
// checksummed block records (WRITE, ZERO, REF, RESYNC, TAG) that an agent
// writes in front of every change to a protected volume and that the pipeline
// ships, spools and applies unchanged. The byte layout is specified in
// FORMAT.md beside this file:
//
//	segment = header(64) record* [footer-record]
//
//	header  +--------+-----+-----+---------+---------+------+--------+-------+
//	        | magic8 | ver2| res2| blksz4  | volid16 | gen8 | first8 | time8 |
//	        +--------+-----+-----+---------+---------+------+--------+-------+
//	        then xxhash64 of bytes 0..56 (8)                             = 64
//
//	record  +------+-------+------+--------+------+---------+---------+--------+---------+
//	        | type1| flags1| res2 | plen4  | seq8 | offset8 | length8 | psum8  | hsum8   | payload(plen)
//	        +------+-------+------+--------+------+---------+---------+--------+---------+
//	        psum = PayloadSum (per-block hashes for WRITE/RESYNC), hsum = xxhash64(bytes 0..40)  = 48
package hrl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Sizes and limits of the format.
const (
	Magic             = "LBHRL\x00\r\n" // 8 bytes; \r\n catches text-mode mangling
	Version           = 1
	HeaderSize        = 64
	RecordHeaderSize  = 48
	DefaultBlockSize  = 4096
	MaxPayload        = 64 << 20 // largest payload a decoder accepts
	refPayloadSize    = 24
	footerPayloadSize = 16
	tagFixedSize      = 12 // kind(1) reserved(1) nameLen(2) unixNano(8)
	MaxTagName        = 1024
	SegmentExt        = ".hrl"
)

// RecordType says what a record does to the volume.
type RecordType uint8

// Record types. Values are part of the on-disk format.
const (
	TypeWrite  RecordType = 1 // payload is the new content of [Offset, Offset+Length)
	TypeZero   RecordType = 2 // [Offset, Offset+Length) reads as zeros; no payload
	TypeRef    RecordType = 3 // same bytes as earlier payload bytes of this segment
	TypeResync RecordType = 4 // region copy: like WRITE, produced by a resync
	TypeTag    RecordType = 5 // recovery point marker; no volume change
	TypeFooter RecordType = 0x7f
)

func (t RecordType) String() string {
	switch t {
	case TypeWrite:
		return "WRITE"
	case TypeZero:
		return "ZERO"
	case TypeRef:
		return "REF"
	case TypeResync:
		return "RESYNC"
	case TypeTag:
		return "TAG"
	case TypeFooter:
		return "FOOTER"
	}
	return fmt.Sprintf("TYPE(%d)", uint8(t))
}

// Record flags.
const (
	FlagTrim uint8 = 1 << 0 // on ZERO: the range was discarded (trim), not written with zeros
)

// TagKind is the consistency of a recovery point.
type TagKind uint8

// Tag kinds. Values are part of the on-disk format.
const (
	TagCrash TagKind = 1 // crash-consistent
	TagApp   TagKind = 2 // application-consistent (filesystem frozen / scripts ran)
	TagGroup TagKind = 3 // multi-volume group point
)

func (k TagKind) String() string {
	switch k {
	case TagCrash:
		return "crash"
	case TagApp:
		return "app"
	case TagGroup:
		return "group"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseTagKind parses "crash", "app" or "group".
func ParseTagKind(s string) (TagKind, error) {
	for _, k := range []TagKind{TagCrash, TagApp, TagGroup} {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown tag kind %q (want crash, app or group)", s)
}

// Errors of this package.
var (
	// ErrCorrupt marks damage before the tail of a segment; it is never
	// skipped. Errors wrapping it are *CorruptError.
	ErrCorrupt = errors.New("journal corrupt")
	// ErrTornTail marks an incomplete or damaged last record: the end of the
	// journal. Recovery truncates it.
	ErrTornTail = errors.New("torn tail")
	// ErrSealed is returned when appending to a sealed segment.
	ErrSealed = errors.New("segment is sealed")
	// ErrBadRecord is returned for a record the writer refuses to encode.
	ErrBadRecord = errors.New("invalid record")
)

// CorruptError names where a segment is damaged.
type CorruptError struct {
	File   string
	Offset int64  // byte offset of the damaged header or record in the file
	Seq    uint64 // seq of the damaged record, or of the last good one when unreadable
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("journal corrupt: %s at byte offset %d (seq %d): %s", e.File, e.Offset, e.Seq, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Header is the fixed segment header.
type Header struct {
	Version    uint16
	BlockSize  uint32
	VolumeID   [16]byte
	Generation uint64
	FirstSeq   uint64
	Created    time.Time
}

var le = binary.LittleEndian

// MarshalHeader encodes h into b[:HeaderSize].
func MarshalHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	copy(b[0:8], Magic)
	le.PutUint16(b[8:], Version)
	le.PutUint16(b[10:], 0)
	le.PutUint32(b[12:], h.BlockSize)
	copy(b[16:32], h.VolumeID[:])
	le.PutUint64(b[32:], h.Generation)
	le.PutUint64(b[40:], h.FirstSeq)
	le.PutUint64(b[48:], uint64(h.Created.UnixNano()))
	le.PutUint64(b[56:], xxhash.Sum64(b[:56]))
}

// UnmarshalHeader decodes and checks a segment header.
func UnmarshalHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("header: %d bytes, want %d: %w", len(b), HeaderSize, ErrTornTail)
	}
	if string(b[0:8]) != Magic {
		return h, errors.New("header: bad magic (not a Lifeboat journal segment)")
	}
	if got, want := le.Uint64(b[56:]), xxhash.Sum64(b[:56]); got != want {
		return h, fmt.Errorf("header: checksum %016x, want %016x", got, want)
	}
	h.Version = le.Uint16(b[8:])
	if h.Version != Version {
		return h, fmt.Errorf("header: format version %d, this build reads %d", h.Version, Version)
	}
	h.BlockSize = le.Uint32(b[12:])
	if h.BlockSize < 512 || h.BlockSize > 1<<20 || h.BlockSize&(h.BlockSize-1) != 0 {
		return h, fmt.Errorf("header: block size %d is not a power of two in [512, 1 MiB]", h.BlockSize)
	}
	copy(h.VolumeID[:], b[16:32])
	h.Generation = le.Uint64(b[32:])
	h.FirstSeq = le.Uint64(b[40:])
	h.Created = time.Unix(0, int64(le.Uint64(b[48:]))).UTC()
	return h, nil
}

// RecordHeader is the fixed part of a record.
type RecordHeader struct {
	Type       RecordType
	Flags      uint8
	PayloadLen uint32
	Seq        uint64
	Offset     uint64 // byte offset on the volume
	Length     uint64 // bytes of the volume the record covers
	PayloadSum uint64 // see PayloadSum
	Sum        uint64 // xxhash64 of the first 40 header bytes
}

// MarshalRecordHeader encodes r into b[:RecordHeaderSize], computing Sum
// (PayloadSum must already be set). It returns Sum.
func MarshalRecordHeader(b []byte, r *RecordHeader) uint64 {
	_ = b[RecordHeaderSize-1]
	b[0] = byte(r.Type)
	b[1] = r.Flags
	b[2], b[3] = 0, 0
	le.PutUint32(b[4:], r.PayloadLen)
	le.PutUint64(b[8:], r.Seq)
	le.PutUint64(b[16:], r.Offset)
	le.PutUint64(b[24:], r.Length)
	le.PutUint64(b[32:], r.PayloadSum)
	r.Sum = xxhash.Sum64(b[:40])
	le.PutUint64(b[40:], r.Sum)
	return r.Sum
}

// UnmarshalRecordHeader decodes a record header and checks its checksum and
// the invariants that do not need the payload.
func UnmarshalRecordHeader(b []byte) (RecordHeader, error) {
	var r RecordHeader
	if len(b) < RecordHeaderSize {
		return r, fmt.Errorf("record header: %d bytes, want %d: %w", len(b), RecordHeaderSize, ErrTornTail)
	}
	r.Sum = le.Uint64(b[40:])
	if want := xxhash.Sum64(b[:40]); r.Sum != want {
		return r, fmt.Errorf("record header checksum %016x, want %016x", r.Sum, want)
	}
	r.Type = RecordType(b[0])
	r.Flags = b[1]
	r.PayloadLen = le.Uint32(b[4:])
	r.Seq = le.Uint64(b[8:])
	r.Offset = le.Uint64(b[16:])
	r.Length = le.Uint64(b[24:])
	r.PayloadSum = le.Uint64(b[32:])
	if b[2] != 0 || b[3] != 0 {
		return r, errors.New("record header: reserved bytes not zero")
	}
	return r, r.check()
}

// check validates the per-type shape of a record header.
func (r *RecordHeader) check() error {
	if r.PayloadLen > MaxPayload {
		return fmt.Errorf("record seq %d: payload %d bytes exceeds limit %d", r.Seq, r.PayloadLen, MaxPayload)
	}
	if r.Offset+r.Length < r.Offset {
		return fmt.Errorf("record seq %d: range overflows", r.Seq)
	}
	switch r.Type {
	case TypeWrite, TypeResync:
		if r.Length == 0 || uint64(r.PayloadLen) != r.Length || r.Flags != 0 {
			return fmt.Errorf("%s seq %d: length %d, payload %d, flags %#x", r.Type, r.Seq, r.Length, r.PayloadLen, r.Flags)
		}
	case TypeZero:
		if r.Length == 0 || r.PayloadLen != 0 || r.Flags&^FlagTrim != 0 {
			return fmt.Errorf("ZERO seq %d: length %d, payload %d, flags %#x", r.Seq, r.Length, r.PayloadLen, r.Flags)
		}
	case TypeRef:
		if r.Length == 0 || r.PayloadLen != refPayloadSize || r.Flags != 0 {
			return fmt.Errorf("REF seq %d: length %d, payload %d", r.Seq, r.Length, r.PayloadLen)
		}
	case TypeTag:
		if r.Length != 0 || r.Offset != 0 || r.PayloadLen < tagFixedSize || r.PayloadLen > tagFixedSize+MaxTagName || r.Flags != 0 {
			return fmt.Errorf("TAG seq %d: offset %d, length %d, payload %d", r.Seq, r.Offset, r.Length, r.PayloadLen)
		}
	case TypeFooter:
		if r.PayloadLen != footerPayloadSize || r.Length != 0 || r.Flags != 0 {
			return fmt.Errorf("FOOTER: payload %d, length %d", r.PayloadLen, r.Length)
		}
	default:
		return fmt.Errorf("record seq %d: unknown type %d", r.Seq, uint8(r.Type))
	}
	return nil
}

// Ref is the payload of a REF record: the record's range holds the same
// bytes as the payload bytes at SegmentOffset of this same segment, which
// belong to the earlier WRITE or RESYNC record SourceSeq; Sum is the
// xxhash64 of those bytes, checked when the reference is resolved.
type Ref struct {
	SourceSeq     uint64
	SegmentOffset uint64
	Sum           uint64
}

func (r Ref) marshal(b []byte) {
	le.PutUint64(b[0:], r.SourceSeq)
	le.PutUint64(b[8:], r.SegmentOffset)
	le.PutUint64(b[16:], r.Sum)
}

// DecodeRef decodes a REF payload.
func DecodeRef(p []byte) (Ref, error) {
	if len(p) != refPayloadSize {
		return Ref{}, fmt.Errorf("REF payload: %d bytes, want %d", len(p), refPayloadSize)
	}
	return Ref{SourceSeq: le.Uint64(p[0:]), SegmentOffset: le.Uint64(p[8:]), Sum: le.Uint64(p[16:])}, nil
}

// Tag is the payload of a TAG record.
type Tag struct {
	Kind TagKind
	Name string
	Time time.Time
}

func (t Tag) size() int { return tagFixedSize + len(t.Name) }

func (t Tag) marshal(b []byte) {
	b[0] = byte(t.Kind)
	b[1] = 0
	le.PutUint16(b[2:], uint16(len(t.Name)))
	le.PutUint64(b[4:], uint64(t.Time.UnixNano()))
	copy(b[tagFixedSize:], t.Name)
}

// DecodeTag decodes a TAG payload.
func DecodeTag(p []byte) (Tag, error) {
	if len(p) < tagFixedSize {
		return Tag{}, fmt.Errorf("TAG payload: %d bytes, want at least %d", len(p), tagFixedSize)
	}
	n := int(le.Uint16(p[2:]))
	if n != len(p)-tagFixedSize {
		return Tag{}, fmt.Errorf("TAG payload: name length %d, have %d bytes", n, len(p)-tagFixedSize)
	}
	k := TagKind(p[0])
	if k < TagCrash || k > TagGroup || p[1] != 0 {
		return Tag{}, fmt.Errorf("TAG payload: unknown kind %d", p[0])
	}
	return Tag{Kind: k, Name: string(p[tagFixedSize:]), Time: time.Unix(0, int64(le.Uint64(p[4:]))).UTC()}, nil
}

// Footer is the payload of the FOOTER record that seals a segment. The
// footer record's Seq is the last seq of the segment (FirstSeq-1 if empty).
type Footer struct {
	Count uint64 // records before the footer
	Chain uint64 // xxhash64 over the header checksum and every record header checksum, in order
}

func (f Footer) marshal(b []byte) {
	le.PutUint64(b[0:], f.Count)
	le.PutUint64(b[8:], f.Chain)
}

func decodeFooter(p []byte) Footer {
	return Footer{Count: le.Uint64(p[0:]), Chain: le.Uint64(p[8:])}
}

// SegmentName is the file name of the segment whose first seq is seq.
func SegmentName(firstSeq uint64) string { return fmt.Sprintf("%016x%s", firstSeq, SegmentExt) }

// ParseSegmentName returns the first seq encoded in a segment file name.
func ParseSegmentName(name string) (uint64, bool) {
	if len(name) != 16+len(SegmentExt) || name[16:] != SegmentExt {
		return 0, false
	}
	var v uint64
	for _, c := range name[:16] {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
