package nbd

import (
	"encoding/binary"
	"io"
	"math/bits"
	"runtime"
	"sync"
)

const (
	// bufHeadroom precedes the payload in pooled buffers, so a READ reply
	// header and its data go out in one write.
	bufHeadroom = 32
	scratchSize = chunkHeaderSize + 6 + 256 // an error chunk with its message
	maxErrorMsg = 256
	// maxDescriptors bounds the extents in one BLOCK_STATUS reply; the
	// client asks again for the rest.
	maxDescriptors = 1024
)

// Buffer pool by size class: class k holds buffers of bufHeadroom + 2^k
// bytes, 2^9 (512 B) to 2^25 (MaxPayload).
const (
	minClass = 9
	maxClass = 25
)

var bufPools [maxClass + 1]sync.Pool

// getBuf returns a buffer of bufHeadroom+n bytes, n <= MaxPayload.
func getBuf(n int) *[]byte {
	k := max(minClass, bits.Len(uint(n-1)))
	if bp, ok := bufPools[k].Get().(*[]byte); ok {
		*bp = (*bp)[:bufHeadroom+n]
		return bp
	}
	b := make([]byte, bufHeadroom+n, bufHeadroom+1<<k)
	return &b
}

func putBuf(bp *[]byte) {
	n := cap(*bp) - bufHeadroom
	if k := bits.Len(uint(n - 1)); k >= minClass && k <= maxClass && n == 1<<k {
		bufPools[k].Put(bp)
	}
}

// worker runs requests of one connection; several run at once.
type worker struct {
	c       *conn
	scratch []byte // small replies
}

// yieldMax is the largest READ or WRITE whose reply the flusher waits
// for by yielding (see send): such requests finish within a few system
// calls. Behind larger ones it would hold replies back.
const yieldMax = 64 << 10

// small reports whether r is a request whose reply send yields for.
func small(r *request) bool {
	return r.errno == 0 && (r.Type == cmdRead || r.Type == cmdWrite) && r.Length <= yieldMax
}

func (w *worker) handle(r *request) {
	c := w.c
	if small(r) {
		defer c.small.Add(-1)
	}
	if r.errno != 0 {
		c.log.Debug("nbd: request refused", "cmd", cmdName(r.Type), "offset", r.Offset, "length", r.Length, "reason", r.msg)
		w.replyError(r, r.errno, r.msg)
		return
	}
	b := c.exp.Backend
	off, n := int64(r.Offset), int64(r.Length)
	var err error
	switch r.Type {
	case cmdRead:
		w.read(r)
		return
	case cmdBlockStatus:
		w.blockStatus(r)
		return
	case cmdWrite:
		_, err = b.WriteAt((*r.buf)[bufHeadroom:], off)
		c.done(r)
	case cmdFlush:
		err = b.Flush()
	case cmdTrim:
		err = b.Trim(off, n)
	case cmdWriteZeroes:
		if r.CommandFlags&cmdFlagNoHole != 0 {
			err = b.WriteZeroes(off, n)
		} else {
			err = b.Trim(off, n) // a hole reads as zeros
		}
	}
	if err == nil && r.CommandFlags&cmdFlagFUA != 0 && r.Type != cmdFlush {
		err = b.Flush()
	}
	if err != nil {
		w.backendError(r, err)
		return
	}
	w.replySimple(r.Handle, 0)
}

func (w *worker) backendError(r *request, err error) {
	e := errno(err)
	w.c.log.Warn("nbd: backend error", "cmd", cmdName(r.Type), "offset", r.Offset, "length", r.Length, "errno", e, "err", err)
	w.replyError(r, e, cmdName(r.Type)+": "+err.Error())
}

func (w *worker) read(r *request) {
	c := w.c
	n := int(r.Length)
	r.buf = getBuf(n)
	defer c.done(r)
	buf := *r.buf
	m, err := c.exp.Backend.ReadAt(buf[bufHeadroom:], int64(r.Offset))
	if m == n && err == io.EOF {
		err = nil
	} else if err == nil && m != n {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		w.backendError(r, err)
		return
	}
	var start int
	if c.structured {
		// One OFFSET_DATA chunk with DONE: never fragmented, so DF holds.
		start = bufHeadroom - chunkHeaderSize - 8
		putChunkHeader(buf[start:], replyFlagDone, chunkOffsetData, r.Handle, uint32(8+n))
		binary.BigEndian.PutUint64(buf[start+chunkHeaderSize:], r.Offset)
	} else {
		start = bufHeadroom - simpleReplySize
		putSimpleReply(buf[start:], r.Handle, 0)
	}
	c.send(buf[start:])
}

// blockStatus answers base:allocation from the backend's extents.
func (w *worker) blockStatus(r *request) {
	c := w.c
	off, n := int64(r.Offset), int64(r.Length)
	var ext []Extent
	if c.exp.extents != nil {
		var err error
		if ext, err = c.exp.extents.Extents(off, n); err != nil {
			// Reporting data is always correct; a failed copy is not.
			c.log.Warn("nbd: extents failed; reporting data", "offset", off, "length", n, "err", err)
			ext = nil
		}
	}
	limit := maxDescriptors
	if r.CommandFlags&cmdFlagReqOne != 0 {
		limit = 1
	}
	bp := getBuf(4 + 8*limit)
	defer putBuf(bp)
	desc := (*bp)[bufHeadroom+4 : bufHeadroom+4]
	pos, end := off, off+n
	var last uint32
	for _, e := range ext {
		if e.Offset != pos || e.Length <= 0 {
			break // not what the contract promises: stop here
		}
		l := min(e.Length, end-pos)
		var st uint32
		if e.Hole {
			st = stateHole | stateZero
		}
		if len(desc) > 0 && st == last {
			binary.BigEndian.PutUint32(desc[len(desc)-8:], binary.BigEndian.Uint32(desc[len(desc)-8:])+uint32(l))
		} else if len(desc)/8 < limit {
			desc = binary.BigEndian.AppendUint32(desc, uint32(l))
			desc = binary.BigEndian.AppendUint32(desc, st)
			last = st
		} else {
			break
		}
		if pos += l; pos >= end {
			break
		}
	}
	if len(desc) == 0 {
		desc = binary.BigEndian.AppendUint32(desc, uint32(n))
		desc = binary.BigEndian.AppendUint32(desc, 0)
	}
	start := bufHeadroom - chunkHeaderSize
	buf := (*bp)[start : bufHeadroom+4+len(desc)]
	putChunkHeader(buf, replyFlagDone, chunkBlockStatus, r.Handle, uint32(4+len(desc)))
	binary.BigEndian.PutUint32(buf[chunkHeaderSize:], contextIDAllocation)
	c.send(buf)
}

func (w *worker) replySimple(handle uint64, errno uint32) {
	putSimpleReply(w.scratch, handle, errno)
	w.c.send(w.scratch[:simpleReplySize])
}

// replyError answers r with an error: an ERROR chunk with a message when
// structured replies are on (a READ must not get a simple reply then),
// else a simple reply.
func (w *worker) replyError(r *request, errno uint32, msg string) {
	if !w.c.structured {
		w.replySimple(r.Handle, errno)
		return
	}
	if len(msg) > maxErrorMsg {
		msg = msg[:maxErrorMsg]
	}
	b := w.scratch
	putChunkHeader(b, replyFlagDone, chunkError, r.Handle, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(b[chunkHeaderSize:], errno)
	binary.BigEndian.PutUint16(b[chunkHeaderSize+4:], uint16(len(msg)))
	n := copy(b[chunkHeaderSize+6:], msg)
	w.c.send(b[:chunkHeaderSize+6+n])
}

func putSimpleReply(b []byte, handle uint64, errno uint32) {
	binary.BigEndian.PutUint32(b[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], handle)
}

func putChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], magicStructured)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint32(b[16:], length)
}

// corkMax is the largest reply that is queued and written together with
// the replies of other requests; larger ones (READ data) are written
// directly.
const corkMax = 16 << 10

// send writes one whole reply. Small replies are group-committed: a sender
// that finds no write in progress becomes the flusher and writes everything
// queued until the queue is empty, so at a high queue depth many replies
// share one write(2) instead of paying one system call each. When other
// small requests (yieldMax) are being run, the flusher first yields the
// processor once (runtime.Gosched): workers that are ready to run finish
// them and queue their replies first. It never waits for a request that
// is blocked (in a system call, on a lock): a slow FLUSH does not hold
// back the replies of fast writes; and behind large requests, which would
// run long before the flusher gets the processor back, it does not yield.
// Replies of different requests may reach the client in any order
// (handles match them); the bytes of one reply are always contiguous. A
// failed write closes the connection: the client cannot resynchronise
// after a partial reply.
func (c *conn) send(b []byte) {
	if len(b) > corkMax {
		c.wmu.Lock()
		c.write(b)
		c.wmu.Unlock()
		return
	}
	c.pmu.Lock()
	c.pending = append(c.pending, b...)
	if c.flushing {
		c.pmu.Unlock()
		return // the sender that is writing will pick it up
	}
	c.flushing = true
	if c.small.Load() > 1 { // others besides the request being answered
		c.pmu.Unlock()
		runtime.Gosched() // let ready workers queue their replies too
		c.pmu.Lock()
	}
	for len(c.pending) > 0 {
		out := c.pending
		c.pending = c.spare[:0]
		c.pmu.Unlock()
		c.wmu.Lock()
		c.write(out)
		c.wmu.Unlock()
		c.srv.replyWrites.Add(1)
		c.pmu.Lock()
		c.spare = out[:0]
	}
	c.flushing = false
	c.pmu.Unlock()
}

func (c *conn) write(b []byte) {
	if _, err := c.nc.Write(b); err != nil && c.broken.CompareAndSwap(false, true) {
		c.log.Debug("nbd: reply failed; closing the connection", "err", err)
		c.nc.Close()
	}
}
