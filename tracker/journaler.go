package tracker

import (
	"fmt"

	"lifeboat/hrl"
)

// The journaler is the one goroutine that appends to the open segment. A
// request hands it the record to append; it takes every request waiting at
// that moment, appends them all (into memory: the segment writer batches),
// writes them with one system call and only then answers them. At a high
// queue depth many 4 KiB writes thus share one write(2), and the caller
// writes the backing store while its record is being journaled.

// maxJournalBatch bounds the requests of one batch.
const maxJournalBatch = 64

type journalReq struct {
	a0, a1 int64
	data   []byte                            // WRITE record content for [a0, a1), when fn is nil
	fn     func(*hrl.Writer) (uint64, error) // any other append
	need   int64                             // the most journal bytes the records can take
	resync bool                              // a resync's record: waits for quota instead of suspending
	err    error
	done   chan struct{}
}

// append appends the request's records.
func (r *journalReq) append(w *hrl.Writer) (uint64, error) {
	if r.fn != nil {
		return r.fn(w)
	}
	_, last, err := w.AppendData(hrl.TypeWrite, uint64(r.a0), r.data)
	return last, err
}

func (v *Volume) startJournaler() {
	v.jreqs = make(chan *journalReq)
	v.jreqPool.New = func() any { return &journalReq{done: make(chan struct{}, 1)} }
	v.wg.Add(1)
	go v.journaler()
}

// submit hands the records described by q (its a0, a1, data, fn, need and
// resync) to the journaler; await returns the result. With fn nil the
// record is a WRITE of data at a0.
func (v *Volume) submit(q journalReq) *journalReq {
	r := v.jreqPool.Get().(*journalReq)
	r.a0, r.a1, r.data, r.fn, r.need, r.resync, r.err = q.a0, q.a1, q.data, q.fn, q.need, q.resync, nil
	select {
	case v.jreqs <- r:
	case <-v.done:
		r.err = ErrClosed
		r.done <- struct{}{}
	}
	return r
}

func (v *Volume) await(r *journalReq) error {
	<-r.done
	err := r.err
	r.fn, r.data = nil, nil
	v.jreqPool.Put(r)
	return err
}

// journal appends records through the journaler and waits until they are in
// the segment file (or the volume switched to bitmap mode).
func (v *Volume) journal(q journalReq) error {
	return v.await(v.submit(q))
}

// journalInline appends a WRITE record in the calling goroutine when it
// is the only write in progress and the journaler is idle, which saves a
// single writer the hand-off to another goroutine; it reports false
// otherwise (then submit: the journaler appends the records of concurrent
// writes together, in one write of the batch).
func (v *Volume) journalInline(a0, a1 int64, data []byte) (bool, error) {
	if v.writers.Load() > 1 || !v.jmu.TryLock() {
		return false, nil
	}
	defer v.jmu.Unlock()
	r := journalReq{a0: a0, a1: a1, data: data, need: dataNeed(int64(len(data)), v.blockSize())}
	v.mu.Lock()
	err := v.journalLocked(&r)
	v.flushLocked()
	v.mu.Unlock()
	return true, err
}

// flushLocked writes the batched records of the open segment.
func (v *Volume) flushLocked() {
	if v.w == nil {
		return
	}
	if err := v.w.FlushPending(); err != nil {
		// The batch's records are not in the journal; their regions
		// are dirty (and now pinned), so the writes themselves succeed.
		v.failLocked(fmt.Errorf("journal append: %w", err))
		return
	}
	v.unflushed = v.unflushed[:0]
}

func (v *Volume) journaler() {
	defer v.wg.Done()
	batch := make([]*journalReq, 0, maxJournalBatch)
	for {
		select {
		case r := <-v.jreqs:
			batch = append(batch[:0], r)
		case <-v.done:
			return
		}
		v.jmu.Lock() // an inline append may be running
	more:
		for len(batch) < maxJournalBatch {
			select {
			case r := <-v.jreqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		v.mu.Lock()
		for _, r := range batch {
			r.err = v.journalLocked(r)
		}
		v.flushLocked()
		v.mu.Unlock()
		v.jmu.Unlock()
		for _, r := range batch {
			r.done <- struct{}{}
		}
	}
}
