package hrl

import (
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
)

// Record is one decoded record. The Record a Reader returns and its
// Payload are valid until the next call to Next: the Reader reuses both.
// A Reader over a byte slice (NewBytesReader) makes Payload a sub-slice of
// the segment's bytes instead, valid as long as those bytes are.
type Record struct {
	RecordHeader
	HeaderOffset  int64 // file offset of the record header
	PayloadOffset int64 // file offset of the payload
	Payload       []byte
}

// TornError reports where the journal ends because its last record is torn.
type TornError struct {
	File   string
	Offset int64  // the good part of the file ends here
	Seq    uint64 // last good seq
	Reason string
}

func (e *TornError) Error() string {
	return fmt.Sprintf("%s: torn tail at byte offset %d after seq %d: %s", e.File, e.Offset, e.Seq, e.Reason)
}

// Unwrap makes errors.Is(err, ErrTornTail) true.
func (e *TornError) Unwrap() error { return ErrTornTail }

// Reader decodes a segment record by record, verifying every checksum. It
// reads through an io.ReaderAt (NewReader) or straight from the segment's
// bytes in memory (NewBytesReader: no copy, and no allocation per record);
// both run the same decoding and checks.
//
// Next returns io.EOF after the footer of a sealed segment or at the clean
// end of an unsealed one, a *TornError when the last record is incomplete or
// damaged with nothing valid after it (the end of the journal), and a
// *CorruptError for damage before the tail, which must never be skipped.
type Reader struct {
	r       io.ReaderAt
	data    []byte // the whole segment, when read from memory; r is then nil
	size    int64
	name    string
	Header  Header
	off     int64
	next    uint64
	count   uint64
	chain   xxhash.Digest
	sum8    [8]byte
	sealed  bool // the footer was reached and verified
	err     error
	hdr     [RecordHeaderSize]byte
	payload []byte
	sumBuf  []byte
	rec     Record // what Next returns
}

// NewReader reads and checks the segment header. name is used in errors.
// A file too short to hold a header gives a *TornError; a damaged header a
// *CorruptError.
func NewReader(r io.ReaderAt, size int64, name string) (*Reader, error) {
	rd := &Reader{}
	if err := rd.reset(r, nil, size, name); err != nil {
		return nil, err
	}
	return rd, nil
}

// NewBytesReader is NewReader over a segment held in memory: the payloads
// of its records are sub-slices of data, never copies.
func NewBytesReader(data []byte, name string) (*Reader, error) {
	rd := &Reader{}
	if err := rd.ResetBytes(data, name); err != nil {
		return nil, err
	}
	return rd, nil
}

// Reset makes rd read the segment of size bytes in r from its start, as
// NewReader does, keeping rd's buffers.
func (rd *Reader) Reset(r io.ReaderAt, size int64, name string) error {
	return rd.reset(r, nil, size, name)
}

// ResetBytes makes rd read the segment in data from its start, as
// NewBytesReader does, keeping rd's buffers: reading segment after segment
// with one Reader allocates nothing once its checksum buffer has grown.
func (rd *Reader) ResetBytes(data []byte, name string) error {
	return rd.reset(nil, data, int64(len(data)), name)
}

func (rd *Reader) reset(r io.ReaderAt, data []byte, size int64, name string) error {
	*rd = Reader{r: r, data: data, size: size, name: name, payload: rd.payload, sumBuf: rd.sumBuf}
	if size < HeaderSize {
		if r != nil && size > 0 { // a read error says more than "torn"
			var b [HeaderSize]byte
			if _, err := r.ReadAt(b[:size], 0); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read %s: %w", name, err)
			}
		}
		return &TornError{File: name, Reason: fmt.Sprintf("%d bytes, shorter than the %d-byte header", size, HeaderSize)}
	}
	hb, err := rd.bytes(0, HeaderSize, &rd.payload)
	if err != nil {
		return err
	}
	h, err := UnmarshalHeader(hb)
	if err != nil {
		return &CorruptError{File: name, Reason: err.Error()}
	}
	rd.Header = h
	rd.off = HeaderSize
	rd.next = h.FirstSeq
	rd.chain.Reset()
	rd.chainAdd(le.Uint64(hb[56:]))
	return nil
}

// readAt fills b from offset off, of the segment in memory or through r.
func (rd *Reader) readAt(b []byte, off int64) (int, error) {
	if rd.data == nil {
		return rd.r.ReadAt(b, off)
	}
	if off >= int64(len(rd.data)) {
		return 0, io.EOF
	}
	n := copy(b, rd.data[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// bytes returns the n bytes at off (which the caller has checked lie
// inside the segment): a sub-slice of the segment in memory, or else read
// into buf, grown as needed.
func (rd *Reader) bytes(off int64, n int, buf *[]byte) ([]byte, error) {
	if rd.data != nil {
		return rd.data[off : off+int64(n) : off+int64(n)], nil
	}
	if cap(*buf) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if n == 0 {
		return b, nil // ReadAt may say io.EOF for nothing read at the end
	}
	if _, err := rd.r.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", rd.name, off, err)
	}
	return b, nil
}

func (rd *Reader) chainAdd(sum uint64) {
	le.PutUint64(rd.sum8[:], sum)
	rd.chain.Write(rd.sum8[:])
}

// Offset is the end of the last good record (where a torn tail starts).
func (rd *Reader) Offset() int64 { return rd.off }

// LastSeq is the seq of the last good record (FirstSeq-1 if none).
func (rd *Reader) LastSeq() uint64 { return rd.next - 1 }

// Count is the number of records read so far.
func (rd *Reader) Count() uint64 { return rd.count }

// Info describes the part of the segment read so far.
func (rd *Reader) Info() SegmentInfo {
	h := rd.Header
	return SegmentInfo{Path: rd.name, VolumeID: h.VolumeID, BlockSize: h.BlockSize, Generation: h.Generation,
		FirstSeq: h.FirstSeq, LastSeq: rd.LastSeq(), Count: rd.Count(), Size: rd.Offset(), Sealed: rd.Sealed(), Created: h.Created}
}

// Sealed reports whether the footer was reached and verified.
func (rd *Reader) Sealed() bool { return rd.sealed }

// Next returns the next record.
func (rd *Reader) Next() (*Record, error) {
	if rd.err != nil {
		return nil, rd.err
	}
	rec, err := rd.next1()
	if err != nil {
		rd.err = err
		return nil, err
	}
	return rec, nil
}

func (rd *Reader) next1() (*Record, error) {
	if rd.sealed {
		return nil, io.EOF
	}
	left := rd.size - rd.off
	if left == 0 {
		return nil, io.EOF
	}
	if left < RecordHeaderSize {
		return nil, rd.torn(fmt.Sprintf("%d bytes left, less than a record header", left))
	}
	hb := rd.hdr[:]
	if rd.data != nil {
		hb = rd.data[rd.off : rd.off+RecordHeaderSize]
	} else if _, err := rd.r.ReadAt(hb, rd.off); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", rd.name, rd.off, err)
	}
	h, err := UnmarshalRecordHeader(hb)
	if err != nil {
		return nil, rd.damaged(rd.next, err.Error())
	}
	end := rd.off + RecordHeaderSize + int64(h.PayloadLen)
	if end > rd.size {
		return nil, rd.torn(fmt.Sprintf("record seq %d needs %d bytes, %d left", h.Seq, end-rd.off, left))
	}
	p, err := rd.bytes(rd.off+RecordHeaderSize, int(h.PayloadLen), &rd.payload)
	if err != nil {
		return nil, err
	}
	if sum := PayloadSum(h.Type, p, int(rd.Header.BlockSize), nil, &rd.sumBuf); sum != h.PayloadSum {
		return nil, rd.damaged(h.Seq, fmt.Sprintf("%s seq %d: payload checksum %016x, want %016x", h.Type, h.Seq, sum, h.PayloadSum))
	}
	// From here the record's bytes are exactly what a writer wrote: any
	// inconsistency is corruption, not a torn write.
	if h.Type == TypeFooter {
		return nil, rd.readFooter(h, p, end)
	}
	if h.Seq != rd.next {
		return nil, rd.corrupt(h.Seq, fmt.Sprintf("seq %d, want %d (records missing or out of order)", h.Seq, rd.next))
	}
	if err := rd.checkPayload(&h, p); err != nil {
		return nil, rd.corrupt(h.Seq, err.Error())
	}
	rd.rec = Record{RecordHeader: h, HeaderOffset: rd.off, PayloadOffset: rd.off + RecordHeaderSize, Payload: p}
	rd.chainAdd(h.Sum)
	rd.off = end
	rd.next++
	rd.count++
	return &rd.rec, nil
}

func (rd *Reader) checkPayload(h *RecordHeader, p []byte) error {
	switch h.Type {
	case TypeRef:
		ref, err := DecodeRef(p)
		if err != nil {
			return err
		}
		if ref.SourceSeq < rd.Header.FirstSeq || ref.SourceSeq >= h.Seq ||
			ref.SegmentOffset < HeaderSize+RecordHeaderSize || ref.SegmentOffset+h.Length > uint64(rd.off) ||
			ref.SegmentOffset+h.Length < ref.SegmentOffset {
			return fmt.Errorf("REF seq %d points outside the earlier records (source seq %d, offset %d)", h.Seq, ref.SourceSeq, ref.SegmentOffset)
		}
	case TypeTag:
		if _, err := DecodeTag(p); err != nil {
			return err
		}
	}
	return nil
}

func (rd *Reader) readFooter(h RecordHeader, p []byte, end int64) error {
	f := decodeFooter(p)
	switch {
	case h.Seq != rd.next-1:
		return rd.corrupt(h.Seq, fmt.Sprintf("footer names last seq %d, records end at %d", h.Seq, rd.next-1))
	case f.Count != rd.count:
		return rd.corrupt(h.Seq, fmt.Sprintf("footer counts %d records, segment has %d", f.Count, rd.count))
	case f.Chain != rd.chain.Sum64():
		return rd.corrupt(h.Seq, fmt.Sprintf("footer checksum %016x, records give %016x", f.Chain, rd.chain.Sum64()))
	case end != rd.size:
		return rd.corruptAt(end, h.Seq, fmt.Sprintf("%d bytes after the footer", rd.size-end))
	}
	rd.sealed = true
	rd.off = end
	return io.EOF
}

func (rd *Reader) torn(reason string) error {
	return &TornError{File: rd.name, Offset: rd.off, Seq: rd.next - 1, Reason: reason}
}

func (rd *Reader) corrupt(seq uint64, reason string) error {
	return rd.corruptAt(rd.off, seq, reason)
}

func (rd *Reader) corruptAt(off int64, seq uint64, reason string) error {
	return &CorruptError{File: rd.name, Offset: off, Seq: seq, Reason: reason}
}

// damaged decides between a torn tail and corruption for a record at rd.off
// that failed its checksums. A writer syncs every record before it writes
// the footer, so a segment that ends in a valid footer was durable as a
// whole: damage inside it is corruption. Without a footer the segment was
// still open when the writer stopped, and everything from the first damaged
// record on was never proven durable (page cache writeback has no order):
// that is a torn tail, even if records that look valid follow it.
func (rd *Reader) damaged(seq uint64, reason string) error {
	sealed, err := hasFooter(readerAtFunc(rd.readAt), rd.size)
	if err != nil {
		return fmt.Errorf("read %s: %w", rd.name, err)
	}
	if sealed {
		return rd.corrupt(seq, reason)
	}
	return rd.torn(reason)
}

// readerAtFunc makes a ReadAt method an io.ReaderAt.
type readerAtFunc func(b []byte, off int64) (int, error)

func (f readerAtFunc) ReadAt(b []byte, off int64) (int, error) { return f(b, off) }

// hasFooter reports whether the file ends in a well-formed footer record.
func hasFooter(r io.ReaderAt, size int64) (bool, error) {
	const n = RecordHeaderSize + footerPayloadSize
	if size < HeaderSize+n {
		return false, nil
	}
	var b [n]byte
	if _, err := r.ReadAt(b[:], size-n); err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	h, err := UnmarshalRecordHeader(b[:RecordHeaderSize])
	return err == nil && h.Type == TypeFooter && xxhash.Sum64(b[RecordHeaderSize:]) == h.PayloadSum, nil
}

// Scan reads the whole segment and returns its description. A torn tail is
// reported as a *TornError together with the description of the good part;
// corruption as a *CorruptError.
func Scan(r io.ReaderAt, size int64, name string) (SegmentInfo, error) {
	rd, err := NewReader(r, size, name)
	if err != nil {
		return SegmentInfo{Path: name}, err
	}
	return rd.scan()
}

// ScanBytes is Scan of a segment held in memory.
func ScanBytes(data []byte, name string) (SegmentInfo, error) {
	rd, err := NewBytesReader(data, name)
	if err != nil {
		return SegmentInfo{Path: name}, err
	}
	return rd.scan()
}

func (rd *Reader) scan() (SegmentInfo, error) {
	var err error
	for err == nil {
		_, err = rd.Next()
	}
	info := rd.Info()
	if errors.Is(err, io.EOF) {
		return info, nil
	}
	return info, err
}
