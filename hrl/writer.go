package hrl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// smallRecord is the largest payload copied next to its header so that the
// record reaches the file in one write; larger payloads take two writes and
// no copy.
const smallRecord = 64 << 10

// WriterConfig configures a segment Writer.
type WriterConfig struct {
	// Dedupe, when set, is the window that REF records may point into. It is
	// reset when the writer is created: references never leave a segment.
	Dedupe *Window
	// Preallocate, when positive, reserves that many bytes for the segment
	// where the file system supports it; Seal releases what was not used.
	Preallocate int64
	// Batch collects small records in memory until FlushPending (see
	// batch.go).
	Batch bool
	// Buffers, when set, are reused instead of allocating new ones. The
	// consecutive writers of one journal may share them: a writer stops
	// using them once its last append returned (Seal does not need them).
	Buffers *Buffers
}

// Buffers are the scratch space of a Writer's appends.
type Buffers struct {
	scratch []byte
	sums    []uint64
	sumBuf  []byte
	pend    []byte // array for batched records; a writer's batch is empty when it hands over
}

// SegmentInfo describes a segment file.
type SegmentInfo struct {
	Path       string
	VolumeID   [16]byte
	BlockSize  uint32
	Generation uint64
	FirstSeq   uint64
	LastSeq    uint64 // FirstSeq-1 when the segment holds no record
	Count      uint64
	Size       int64
	Sealed     bool
	Created    time.Time
}

// Writer appends records to one open segment. It is not safe for concurrent
// use; the tracker serialises appends.
//
// Durability: appended records reach the file (and the page cache) before an
// Append returns; they are durable after Sync or Seal returns.
type Writer struct {
	fs       FS
	f        File
	path     string
	hdr      Header
	off      int64 // end of the last complete record
	next     uint64
	count    uint64
	chain    xxhash.Digest
	sealed   bool
	synced   atomic.Bool // directory entry made durable
	broken   error
	win      *Window
	hash     func([]byte) uint64 // dedupe key; nil means the block's xxhash64 (tests force collisions)
	buf      *Buffers
	sum8     [8]byte
	small    [refPayloadSize + tagFixedSize + MaxTagName]byte // REF and TAG payloads
	footer   [RecordHeaderSize + footerPayloadSize]byte
	created  time.Time
	prealloc bool // space reserved past the end, released by Seal
	batch    bool
	pend     []byte // batched records not yet written (its own slice of buf.pend's array)
	// the state before the pending batch, restored if it cannot be written
	pstart        int64
	pnext, pcount uint64
	pchain        xxhash.Digest
}

// Create creates the segment file for h in dir (named by h.FirstSeq) and
// writes its header. Neither the header nor the name is durable before the
// first Sync.
func Create(fsys FS, dir string, h Header, cfg WriterConfig) (*Writer, error) {
	if h.BlockSize == 0 {
		h.BlockSize = DefaultBlockSize
	}
	if h.Created.IsZero() {
		h.Created = time.Now()
	}
	path := filepath.Join(dir, SegmentName(h.FirstSeq))
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, PrivateFile)
	if err != nil {
		return nil, fmt.Errorf("create segment: %w", err)
	}
	buf := cfg.Buffers
	if buf == nil {
		buf = &Buffers{}
	}
	if len(buf.scratch) < RecordHeaderSize+smallRecord {
		buf.scratch = make([]byte, RecordHeaderSize+smallRecord)
	}
	w := &Writer{fs: fsys, f: f, path: path, hdr: h, next: h.FirstSeq, win: cfg.Dedupe,
		buf: buf, created: h.Created, batch: cfg.Batch, pend: buf.pend[:0]}
	var hb [HeaderSize]byte
	MarshalHeader(hb[:], h)
	if _, err := f.WriteAt(hb[:], 0); err != nil {
		f.Close()
		fsys.Remove(path)
		return nil, fmt.Errorf("write segment header %s: %w", path, err)
	}
	w.off = HeaderSize
	if pa, ok := f.(Preallocator); ok && cfg.Preallocate > 0 {
		// Best effort: without it appends just allocate as they go.
		w.prealloc = pa.Preallocate(cfg.Preallocate) == nil
	}
	w.chain.Reset()
	w.chainAdd(le.Uint64(hb[56:]))
	if w.win != nil {
		w.win.reset(h.BlockSize)
	}
	return w, nil
}

func (w *Writer) chainAdd(sum uint64) {
	le.PutUint64(w.sum8[:], sum)
	w.chain.Write(w.sum8[:])
}

// Path is the segment file's path.
func (w *Writer) Path() string { return w.path }

// Size is the number of bytes written so far.
func (w *Writer) Size() int64 { return w.off }

// Count is the number of records appended.
func (w *Writer) Count() uint64 { return w.count }

// NextSeq is the seq the next record will get.
func (w *Writer) NextSeq() uint64 { return w.next }

// Created is when the segment was created.
func (w *Writer) Created() time.Time { return w.created }

// Info describes the segment as written so far.
func (w *Writer) Info() SegmentInfo {
	return SegmentInfo{Path: w.path, VolumeID: w.hdr.VolumeID, BlockSize: w.hdr.BlockSize, Generation: w.hdr.Generation, FirstSeq: w.hdr.FirstSeq,
		LastSeq: w.next - 1, Count: w.count, Size: w.off, Sealed: w.sealed, Created: w.created}
}

func (w *Writer) usable() error {
	if w.sealed {
		return ErrSealed
	}
	return w.broken
}

// append writes one record. On a failed write the file is cut back to the
// end of the last complete record so the segment stays well-formed; if even
// that fails the writer refuses further appends.
func (w *Writer) append(h *RecordHeader, payload []byte, sums []uint64) error {
	if err := w.usable(); err != nil {
		return err
	}
	h.Seq = w.next
	h.PayloadLen = uint32(len(payload))
	h.PayloadSum = PayloadSum(h.Type, payload, int(w.hdr.BlockSize), sums, &w.buf.sumBuf)
	if err := h.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	var err error
	sc := w.buf.scratch
	if w.batch && len(payload) <= smallRecord && len(w.buf.pend) < maxBatch {
		w.appendBatched(h, payload)
	} else if err = w.FlushPending(); err != nil {
		return err
	} else if len(payload) <= smallRecord {
		n := RecordHeaderSize + len(payload)
		MarshalRecordHeader(sc, h)
		copy(sc[RecordHeaderSize:], payload)
		_, err = w.f.WriteAt(sc[:n], w.off)
	} else {
		MarshalRecordHeader(sc, h)
		if _, err = w.f.WriteAt(sc[:RecordHeaderSize], w.off); err == nil {
			_, err = w.f.WriteAt(payload, w.off+RecordHeaderSize)
		}
	}
	if err != nil {
		if terr := w.f.Truncate(w.off); terr != nil {
			w.broken = fmt.Errorf("segment %s unusable after failed append (%v) and failed truncate: %w", w.path, err, terr)
		}
		return fmt.Errorf("append seq %d to %s: %w", h.Seq, w.path, err)
	}
	w.chainAdd(h.Sum)
	w.off += RecordHeaderSize + int64(len(payload))
	w.next++
	w.count++
	return nil
}

// AppendZero appends a ZERO record for [off, off+n); trim marks a discard.
func (w *Writer) AppendZero(off, n uint64, trim bool) (uint64, error) {
	h := RecordHeader{Type: TypeZero, Offset: off, Length: n}
	if trim {
		h.Flags = FlagTrim
	}
	if err := w.append(&h, nil, nil); err != nil {
		return 0, err
	}
	return h.Seq, nil
}

// AppendTag appends a TAG record and returns its seq.
func (w *Writer) AppendTag(t Tag) (uint64, error) {
	if t.Kind < TagCrash || t.Kind > TagGroup {
		return 0, fmt.Errorf("%w: tag kind %d", ErrBadRecord, t.Kind)
	}
	if len(t.Name) > MaxTagName {
		return 0, fmt.Errorf("%w: tag name longer than %d bytes", ErrBadRecord, MaxTagName)
	}
	if t.Time.IsZero() {
		t.Time = time.Now()
	}
	p := w.small[:t.size()]
	t.marshal(p)
	h := RecordHeader{Type: TypeTag}
	if err := w.append(&h, p, nil); err != nil {
		return 0, err
	}
	return h.Seq, nil
}

// AppendData journals new content for [off, off+len(data)) as records of
// type typ (TypeWrite or TypeResync). off must be block aligned; the length
// should be whole blocks except for a short last block at the end of the
// volume. All-zero blocks become ZERO records and, with a dedupe window,
// blocks whose bytes were already written in this segment become REF
// records. It returns the seq range used.
func (w *Writer) AppendData(typ RecordType, off uint64, data []byte) (first, last uint64, err error) {
	if typ != TypeWrite && typ != TypeResync {
		return 0, 0, fmt.Errorf("%w: AppendData with type %s", ErrBadRecord, typ)
	}
	bs := int(w.hdr.BlockSize)
	if off%uint64(bs) != 0 || len(data) == 0 {
		return 0, 0, fmt.Errorf("%w: data at %d (%d bytes) is not block aligned", ErrBadRecord, off, len(data))
	}
	if err := w.usable(); err != nil {
		return 0, 0, err
	}
	first = w.next
	var s splitter
	s.init(w, typ, off, data)
	for i := 0; i < len(data); i += bs {
		end := min(i+bs, len(data))
		if err := s.add(i, end); err != nil {
			return first, w.next - 1, err
		}
	}
	if err := s.flush(); err != nil {
		return first, w.next - 1, err
	}
	return first, w.next - 1, nil
}

// Sync makes every appended record durable, and the segment's name on the
// first call.
func (w *Writer) Sync() error {
	if w.broken != nil {
		return w.broken
	}
	if err := w.FlushPending(); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync segment %s: %w", w.path, err)
	}
	return w.syncDir()
}

func (w *Writer) syncDir() error {
	if w.synced.Load() {
		return nil
	}
	if err := w.fs.SyncDir(filepath.Dir(w.path)); err != nil {
		return fmt.Errorf("sync journal directory: %w", err)
	}
	w.synced.Store(true)
	return nil
}

// SyncFunc writes the batched records, as Sync does, and returns a
// function that makes every record appended so far durable (and the
// segment's name, the first time). The caller holds what serialises the
// writer's appends while it calls SyncFunc, and may call the function
// after releasing it: the fsync then holds up no append. When the writer
// was sealed or closed in between, the function's error wraps
// os.ErrClosed; a successful seal had made the records durable.
func (w *Writer) SyncFunc() (func() error, error) {
	if w.broken != nil {
		return nil, w.broken
	}
	if err := w.FlushPending(); err != nil {
		return nil, err
	}
	f := w.f
	if f == nil {
		return nil, fmt.Errorf("sync segment %s: %w", w.path, os.ErrClosed)
	}
	return func() error {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("sync segment %s: %w", w.path, err)
		}
		return w.syncDir()
	}, nil
}

// Seal appends the footer and makes the whole segment durable. A sealed
// segment accepts no more records.
func (w *Writer) Seal() (SegmentInfo, error) {
	if err := w.usable(); err != nil {
		return SegmentInfo{}, err
	}
	if err := w.FlushPending(); err != nil {
		return SegmentInfo{}, err
	}
	// Records first, footer second: a valid footer then proves that every
	// record before it is durable, which is how readers tell corruption
	// from a torn tail.
	if err := w.f.Sync(); err != nil {
		w.broken = fmt.Errorf("seal segment %s: sync: %w", w.path, err)
		return SegmentInfo{}, w.broken
	}
	b := w.footer[:]
	Footer{Count: w.count, Chain: w.chain.Sum64()}.marshal(b[RecordHeaderSize:])
	h := RecordHeader{Type: TypeFooter, Seq: w.next - 1, PayloadLen: footerPayloadSize, PayloadSum: xxhash.Sum64(b[RecordHeaderSize:])}
	MarshalRecordHeader(b, &h)
	if _, err := w.f.WriteAt(b, w.off); err != nil {
		w.f.Truncate(w.off)
		return SegmentInfo{}, fmt.Errorf("seal segment %s: %w", w.path, err)
	}
	if w.prealloc {
		// Truncating to the size releases the reserved blocks past it.
		if err := w.f.Truncate(w.off + int64(len(b))); err != nil {
			w.broken = fmt.Errorf("seal segment %s: release preallocated space: %w", w.path, err)
			return SegmentInfo{}, w.broken
		}
	}
	if err := w.f.Sync(); err != nil {
		w.broken = fmt.Errorf("seal segment %s: sync: %w", w.path, err)
		return SegmentInfo{}, w.broken
	}
	if err := w.syncDir(); err != nil {
		return SegmentInfo{}, err
	}
	w.off += int64(len(b))
	w.sealed = true
	return w.Info(), nil
}

// Close closes the file without sealing.
func (w *Writer) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	if w.broken == nil && !w.sealed {
		w.broken = errors.New("segment writer closed")
	}
	return err
}
