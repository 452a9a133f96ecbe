package tracker

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"lifeboat/hrl"
)

// parallelWrite is the smallest write whose journal append always goes to
// the journaler, to run in parallel with the backing write; smaller ones
// are journaled inline when the journaler is idle.
const parallelWrite = 64 << 10

func (v *Volume) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off+n > v.size || off+n < off {
		return fmt.Errorf("%w: [%d, %d) on a volume of %d bytes", ErrOutOfRange, off, off+n, v.size)
	}
	return nil
}

// enter admits a write, zero or trim unless the volume is read-only; the
// caller does v.writers.Add(-1) when it is done.
func (v *Volume) enter() error {
	v.writers.Add(1)
	if v.readOnly.Load() {
		v.writers.Add(-1)
		return fmt.Errorf("%w: %w", ErrReadOnly, syscall.EPERM)
	}
	return nil
}

// SetReadOnly makes writes, zeroes and trims fail with ErrReadOnly (which
// wraps EPERM, so NBD and FUSE clients get EPERM) for the reason given,
// or, with "", work again. The state is durable: a volume opened again is
// read-only from its first request on. Making it read-only waits for the
// writes in flight: a Flush after it covers every write the volume
// acknowledged or ever will.
func (v *Volume) SetReadOnly(reason string) error {
	v.readOnly.Store(reason != "")
	for reason != "" && v.writers.Load() != 0 {
		time.Sleep(100 * time.Microsecond)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st.ReadOnly == reason {
		return nil
	}
	v.st.ReadOnly = reason
	if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
		return fmt.Errorf("record read-only: %w", err)
	}
	return nil
}

// ReadOnly returns why the volume refuses writes, "" when it takes them.
func (v *Volume) ReadOnly() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st.ReadOnly
}

// align widens [off, off+n) to whole blocks, clamped to the volume size.
func (v *Volume) align(off, n int64) (int64, int64) {
	bs := v.blockSize()
	return off / bs * bs, min((off+n+bs-1)/bs*bs, v.size)
}

// ReadAt reads from the backing store.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	if err := v.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	return v.backing.ReadAt(p, off)
}

func (v *Volume) getBuf(n int64) *[]byte {
	if bp, ok := v.bufs.Get().(*[]byte); ok && int64(cap(*bp)) >= n {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n)
	return &b
}

// widen returns the whole-block content of [a0, a1) after p is written at
// off: the surrounding bytes of the first and last block come from the
// backing store. The caller holds the range lock.
func (v *Volume) widen(p []byte, off, a0, a1 int64) (*[]byte, error) {
	bp := v.getBuf(a1 - a0)
	b := *bp
	bs := v.blockSize()
	end := off + int64(len(p))
	if off != a0 {
		if _, err := v.backing.ReadAt(b[:min(bs, a1-a0)], a0); err != nil {
			v.bufs.Put(bp)
			return nil, fmt.Errorf("read around unaligned write: %w", err)
		}
	}
	if tb := end / bs * bs; end != a1 && !(tb == a0 && off != a0) {
		if _, err := v.backing.ReadAt(b[tb-a0:], tb); err != nil {
			v.bufs.Put(bp)
			return nil, fmt.Errorf("read around unaligned write: %w", err)
		}
	}
	copy(b[off-a0:], p)
	return bp, nil
}

// WriteAt writes p at off: marks the bitmap, journals, writes the backing.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if err := v.checkRange(off, n); err != nil || n == 0 {
		return 0, err
	}
	if err := v.enter(); err != nil {
		return 0, err
	}
	defer v.writers.Add(-1)
	a0, a1 := v.align(off, n)
	v.locks.lock(a0, a1)
	defer v.locks.unlock(a0, a1)
	if err := v.bitmap.Mark(off, n); err != nil {
		return 0, err
	}
	data, bp := p, (*[]byte)(nil)
	if a0 != off || a1 != off+n {
		var err error
		if bp, err = v.widen(p, off, a0, a1); err != nil {
			return 0, err
		}
		data = *bp
	}
	var err error
	var written int
	var werr error
	inline := false
	if len(data) < parallelWrite {
		inline, err = v.journalInline(a0, a1, data)
	}
	if inline {
		written, werr = v.backing.WriteAt(p, off)
	} else {
		// The journaler appends the record (with those of other writers)
		// while this goroutine writes the backing store.
		req := v.submit(journalReq{a0: a0, a1: a1, data: data, need: dataNeed(int64(len(data)), v.blockSize())})
		written, werr = v.backing.WriteAt(p, off)
		err = v.await(req)
	}
	if bp != nil {
		v.bufs.Put(bp)
	}
	if err != nil {
		return 0, err
	}
	v.churn.written.Add(int64(written))
	return written, werr
}

// WriteZeroes makes [off, off+n) read as zeros, keeping it allocated.
func (v *Volume) WriteZeroes(off, n int64) error { return v.zero(off, n, false) }

// Trim discards [off, off+n); it reads as zeros afterwards.
func (v *Volume) Trim(off, n int64) error { return v.zero(off, n, true) }

func (v *Volume) zero(off, n int64, trim bool) error {
	if err := v.checkRange(off, n); err != nil || n == 0 {
		return err
	}
	if err := v.enter(); err != nil {
		return err
	}
	defer v.writers.Add(-1)
	a0, a1 := v.align(off, n)
	v.locks.lock(a0, a1)
	defer v.locks.unlock(a0, a1)
	if err := v.bitmap.Mark(off, n); err != nil {
		return err
	}
	bs := v.blockSize()
	// Whole blocks inside the range become one ZERO record; partial blocks
	// at either end become WRITE records of their new content.
	s, e := off, off+n
	he, ts := s, e // the whole-block middle is [he, ts)
	if s%bs != 0 {
		he = min(s/bs*bs+bs, e)
	}
	if e%bs != 0 && e != v.size {
		ts = max(e/bs*bs, he)
	}
	// At most a WRITE of a block at either end and a ZERO in between.
	need := 2*(bs+hrl.RecordHeaderSize) + hrl.RecordHeaderSize
	err := v.journal(journalReq{a0: a0, a1: a1, need: need, fn: func(w *hrl.Writer) (uint64, error) {
		var last uint64
		var err error
		if s < he && s%bs != 0 {
			if last, err = v.journalZeroedBlock(w, s, he); err != nil {
				return last, err
			}
		}
		if he < ts {
			if last, err = w.AppendZero(uint64(he), uint64(ts-he), trim); err != nil {
				return last, err
			}
		}
		if ts < e && ts >= he {
			last, err = v.journalZeroedBlock(w, ts, e)
		}
		return last, err
	}})
	if err != nil {
		return err
	}
	if trim {
		err = v.backing.PunchHole(off, n)
	} else {
		err = v.backing.ZeroRange(off, n)
	}
	if err != nil {
		return fmt.Errorf("zero [%d, %d) of the backing store: %w", off, off+n, err)
	}
	v.churn.zeroed.Add(n)
	return nil
}

// journalZeroedBlock journals the block containing [s, e) with that part
// zeroed.
func (v *Volume) journalZeroedBlock(w *hrl.Writer, s, e int64) (uint64, error) {
	bs := v.blockSize()
	b0 := s / bs * bs
	b1 := min(b0+bs, v.size)
	bp := v.getBuf(b1 - b0)
	defer v.bufs.Put(bp)
	b := *bp
	if _, err := v.backing.ReadAt(b, b0); err != nil {
		return 0, fmt.Errorf("read around unaligned zero range: %w", err)
	}
	clear(b[s-b0 : e-b0])
	_, last, err := w.AppendData(hrl.TypeWrite, uint64(b0), b)
	return last, err
}

// journalLocked appends r's records to the open segment, records the
// regions of [r.a0, r.a1) as touched by the seqs they used and rolls the
// segment when it is full. When the records cannot be journaled (the
// journal fails, or they could take it above JournalQuota) the volume
// switches to bitmap mode and pins the regions: the write still succeeds,
// its regions are already dirty. A resync's record is instead refused with
// errQuotaWait when over the quota, and the resync waits for room.
func (v *Volume) journalLocked(r *journalReq) error {
	if v.closed {
		return ErrClosed
	}
	if v.st.Mode == ModeJournal {
		if err := v.overQuotaLocked(r.need); err != nil {
			if r.resync {
				return errQuotaWait
			}
			v.suspendLocked(err)
		}
	}
	if v.st.Mode == ModeJournal {
		first := v.w.NextSeq()
		var last uint64
		var err error
		if v.wMem {
			err = v.reserveCopySeqsLocked(first, r.need)
		}
		if err == nil {
			last, err = r.append(v.w)
		}
		if err == nil {
			v.trackLocked(r, first, last)
			return nil
		}
		v.failLocked(fmt.Errorf("journal append: %w", err))
	}
	// Unjournaled: no acknowledgement may clear these regions before a
	// resync has journaled them.
	v.pinLocked(r.a0, r.a1)
	return nil
}

// trackLocked does the bookkeeping of records r appended with seqs
// [first, last], and rolls the segment when it is full.
func (v *Volume) trackLocked(r *journalReq, first, last uint64) {
	if last >= first {
		r0, r1 := v.bitmap.regions(r.a0, r.a1-r.a0)
		segFirst := v.w.Info().FirstSeq
		for reg := r0; reg < r1; reg++ {
			if prev, ok := v.touched[reg]; !ok || prev < segFirst {
				v.curRegion = append(v.curRegion, reg)
			}
			v.touched[reg] = last
		}
		if r.resync {
			v.unpinCoveredLocked(r.a0, r.a1)
			v.copied.set(r0, r1)
		} else {
			v.copied.unset(r0, r1)
		}
	}
	if v.w.Pending() {
		v.unflushed = append(v.unflushed, span{r.a0, r.a1})
	} else {
		v.unflushed = v.unflushed[:0] // every record so far is in the file
	}
	if v.w.Size() >= v.segmentLimitLocked() {
		v.rollLocked()
	}
}

// failLocked switches to bitmap mode after a write to the journal failed:
// the records still in the batch were lost with it, so their regions are
// pinned.
func (v *Volume) failLocked(cause error) {
	v.lostLocked()
	v.suspendLocked(cause)
}

// suspendLocked switches to bitmap mode. The records already written stay
// valid and are sealed; from now on only the bitmap tracks changes, until
// Resync.
func (v *Volume) suspendLocked(cause error) {
	v.suspendAs(cause, slog.LevelError, "journal suspended, tracking dirty regions only; a resync will be needed")
}

// suspendAs is suspendLocked logging msg at level.
func (v *Volume) suspendAs(cause error, level slog.Level, msg string) {
	v.suspendCause = cause
	v.st.Mode = ModeBitmap
	v.st.ModeReason = cause.Error()
	v.st.Resync = "journal suspended: " + cause.Error()
	v.logger().Log(context.Background(), level, msg, "path", v.Path, "reason", cause)
	if w := v.w; w != nil {
		v.resumeSeq = w.NextSeq()
		if w.Count() > 0 {
			v.rollLocked()
		} else {
			w.Close()
			v.fsFor(v.wMem).Remove(w.Path())
		}
		v.w = nil
	}
	v.wakeLocked()
	if err := saveState(v.FS, v.JournalDir, v.st); err != nil {
		v.logger().Error("could not persist bitmap mode", "err", err)
	}
}
