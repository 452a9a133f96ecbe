package hrl

import "fmt"

// maxBatch bounds the bytes of records kept in memory before they are
// written, in batch mode.
const maxBatch = 1 << 20

// In batch mode (WriterConfig.Batch) appends of small records are collected
// in memory and written with one write by FlushPending, so that the records
// of many concurrent requests cost one system call. Until FlushPending
// returns, a batched record is not in the file: the caller must not report
// it written before that. Sync and Seal flush first; Close does not.

// appendBatched adds an encoded record to the pending batch.
func (w *Writer) appendBatched(h *RecordHeader, payload []byte) {
	if len(w.pend) == 0 {
		w.pstart, w.pnext, w.pcount, w.pchain = w.off, w.next, w.count, w.chain
	}
	n := len(w.pend)
	need := n + RecordHeaderSize + len(payload)
	if cap(w.pend) < need {
		w.pend = append(w.pend[:cap(w.pend)], make([]byte, need-cap(w.pend))...)
		w.buf.pend = w.pend[:0] // the next writer reuses the larger array
	}
	w.pend = w.pend[:need]
	MarshalRecordHeader(w.pend[n:], h)
	copy(w.pend[n+RecordHeaderSize:], payload)
}

// Pending reports whether batched records wait to be written.
func (w *Writer) Pending() bool { return len(w.pend) > 0 }

// FlushPending writes the batched records. If the write fails, the writer
// forgets them, as if they had never been appended (their seqs are given
// again), cuts the file back and returns the error.
func (w *Writer) FlushPending() error {
	if !w.Pending() {
		return nil
	}
	_, err := w.f.WriteAt(w.pend, w.pstart)
	n := len(w.pend)
	w.pend = w.pend[:0]
	if err == nil {
		return nil
	}
	w.off, w.next, w.count, w.chain = w.pstart, w.pnext, w.pcount, w.pchain
	if w.win != nil {
		w.win.forgetFrom(uint64(w.pstart))
	}
	if terr := w.f.Truncate(w.pstart); terr != nil {
		w.broken = fmt.Errorf("segment %s unusable after a failed write (%v) and a failed truncate: %w", w.path, err, terr)
	}
	return fmt.Errorf("write %d bytes of records to %s: %w", n, w.path, err)
}

// pendingBlock returns the batched bytes at file offset off, if they are
// still in memory.
func (w *Writer) pendingBlock(off uint64, n int) ([]byte, bool) {
	if !w.Pending() || int64(off) < w.pstart {
		return nil, false
	}
	i := int64(off) - w.pstart
	if i+int64(n) > int64(len(w.pend)) {
		return nil, false
	}
	return w.pend[i : i+int64(n)], true
}

// forgetFrom drops the blocks at or after segment offset off.
func (d *Window) forgetFrom(off uint64) {
	for k, loc := range d.m {
		if loc.off >= off {
			delete(d.m, k)
		}
	}
}
