package failover

import (
	"lifeboat/hrl"
)

// piece is the part [s, e) of block blk that a request covers, when it
// does not cover the whole block.
type piece struct {
	blk, s, e int64
	ok        bool
}

// blockEnd is the end of block b (the last block may be short).
func (v *View) blockEnd(b int64) int64 { return min((b+1)*blockSize, v.size) }

// split cuts [off, end) into a partial first block, a run [ms, me) of whole
// blocks (possibly empty) and a partial last block.
func (v *View) split(off, end int64) (head piece, ms, me int64, tail piece) {
	b0, b1 := off/blockSize, (end-1)/blockSize
	ms, me = b0*blockSize, v.blockEnd(b1)
	if off != ms || end < v.blockEnd(b0) {
		head = piece{blk: b0, s: off, e: min(end, v.blockEnd(b0)), ok: true}
		ms = v.blockEnd(b0)
	}
	if b1 != b0 && end != me {
		tail = piece{blk: b1, s: b1 * blockSize, e: end, ok: true}
		me = tail.s
	}
	me = max(me, ms)
	return head, ms, me, tail
}

// write writes p at off into the data file. The caller holds the stripes.
func (v *View) write(p []byte, off int64) error {
	head, ms, me, tail := v.split(off, off+int64(len(p)))
	for _, pc := range []piece{head, tail} {
		if pc.ok {
			if err := v.partial(pc, p[pc.s-off:pc.e-off]); err != nil {
				return err
			}
		}
	}
	if me > ms {
		if _, err := v.data.WriteAt(p[ms-off:me-off], ms); err != nil {
			return err
		}
	}
	return nil
}

// zero makes [off, off+n) zeros in the data file: holes for whole blocks.
// The caller holds the stripes.
func (v *View) zero(off, n int64) error {
	head, ms, me, tail := v.split(off, off+n)
	for _, pc := range []piece{head, tail} {
		if pc.ok {
			if err := v.partial(pc, nil); err != nil {
				return err
			}
		}
	}
	if me > ms {
		return v.data.PunchHole(ms, me-ms)
	}
	return nil
}

// partial writes src (zeros when nil) over piece pc of a block. A block
// already in the overlay takes the bytes in place; any other is read from
// the point, merged and written whole, so that the map may then mark it.
func (v *View) partial(pc piece, src []byte) error {
	if v.m.has(pc.blk) {
		if src == nil {
			return hrl.WriteZeros(v.data, pc.s, pc.e-pc.s)
		}
		_, err := v.data.WriteAt(src, pc.s)
		return err
	}
	bp := v.bufs.Get().(*[]byte)
	defer v.bufs.Put(bp)
	start := pc.blk * blockSize
	buf := (*bp)[:v.blockEnd(pc.blk)-start]
	if err := v.readBase(buf, start); err != nil {
		return err
	}
	if src == nil {
		clear(buf[pc.s-start : pc.e-start])
	} else {
		copy(buf[pc.s-start:], src)
	}
	_, err := v.data.WriteAt(buf, start)
	return err
}
