package azure

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"slices"

	"lifeboat/targets"
)

// Page blob limits the planner builds its calls for.
const (
	// MaxPutPage is the largest Put Page (update) request Azure accepts.
	MaxPutPage = 4 << 20
	// planPage is the page blob's page: every offset and length of a Put
	// Page or Clear Pages call is a multiple of it.
	planPage = 512
)

// CallKind says what a Call does to the page blob.
type CallKind uint8

// The two page blob calls a plan consists of.
const (
	// PutPages writes Data at Off (Put Page, x-ms-page-write: update).
	PutPages CallKind = iota + 1
	// ClearPages zeroes Len bytes at Off (Put Page, x-ms-page-write:
	// clear). Azure allows a clear range up to the blob's size, so clears
	// are not cut at MaxPutPage.
	ClearPages
)

func (k CallKind) String() string {
	switch k {
	case PutPages:
		return "PutPages"
	case ClearPages:
		return "ClearPages"
	}
	return fmt.Sprintf("CallKind(%d)", uint8(k))
}

// Call is one page blob request of a plan: PutPages of Data (Len ==
// len(Data)) or ClearPages of Len bytes (Data nil), at Off.
type Call struct {
	Kind CallKind
	Off  int64
	Len  int64
	Data []byte
	// plain, for a Put Page of an encrypted replica whose Data is nil: the
	// planned calls whose data it encrypts, done by the request's own
	// goroutine (see encryptCalls).
	plain []Call
}

// Planner turns a batch of extents into page blob calls (see Plan). It keeps
// its scratch slices between calls, so a long-lived Planner plans without
// allocating once its slices have grown. A Planner is not safe for
// concurrent use; the calls it returns are valid until its next Plan.
type Planner struct {
	events []planEvent
	heap   []int32
	segs   []planSeg
	calls  []Call
	arena  []byte // data of PutPages calls that join several extents

	// The PutPages call being built: pieces of data at curOff.
	curOff    int64
	curLen    int64
	curPieces [][]byte
	// Data bytes of all segments, and those handed to put so far: an
	// upper bound of what the arena must still take.
	dataTotal, dataSeen int64
}

// planEvent is the start or end of an extent in the sweep over offsets.
type planEvent struct {
	pos int64
	ext int32
}

// planSeg is a piece of the final image: Len bytes at Off whose content is
// what extent ext says.
type planSeg struct {
	off, len int64
	ext      int32
}

// Plan turns extents, in journal order, into the page blob calls that give
// the same content: applying the returned calls to a blob, in any order or
// all at once, leaves every byte as the last extent covering it says
// (untouched bytes keep their content).
//
// Guarantees:
//   - every call's Off and Len are multiples of 512; PutPages calls are at
//     most MaxPutPage bytes long; ClearPages calls may be longer (Azure
//     allows a clear up to the blob's size);
//   - the calls are sorted by Off and do not overlap, so they can be sent
//     concurrently, in any order, and each one repeated after a failure;
//   - no 512-byte page that is all zero is sent as data: it is cleared;
//   - adjacent data is joined into one PutPages call up to MaxPutPage and
//     adjacent zeroes into one ClearPages call, whichever extents they came
//     from; bytes no extent covers are never in a call.
//
// Data of a PutPages call aliases the extent's Data when the call lies in one
// extent, and is a copy otherwise. Extents must start and end on multiples of
// blockSize, itself a positive multiple of 512; anything else is refused with
// an error wrapping targets.ErrUnaligned (targets.ErrOutOfRange for negative
// or overflowing extents), before any call is planned.
func Plan(exts []targets.Extent, blockSize int) ([]Call, error) {
	var p Planner
	return p.Plan(exts, blockSize)
}

// Plan is the package-level Plan, reusing p's scratch space. The returned
// slice and the data it does not alias are overwritten by p's next Plan.
func (p *Planner) Plan(exts []targets.Extent, blockSize int) ([]Call, error) {
	if blockSize <= 0 || blockSize%planPage != 0 {
		return nil, fmt.Errorf("plan page blob calls: block size %d is not a positive multiple of %d: %w", blockSize, planPage, targets.ErrUnaligned)
	}
	if len(exts) > math.MaxInt32 {
		return nil, fmt.Errorf("plan page blob calls: %d extents in one batch, more than %d", len(exts), math.MaxInt32)
	}
	bs := int64(blockSize)
	p.events = p.events[:0]
	for i, e := range exts {
		n := e.Length()
		if e.Data != nil && e.Len != 0 && e.Len != int64(len(e.Data)) {
			return nil, fmt.Errorf("plan page blob calls: extent %d at %d: Len %d disagrees with %d bytes of Data: %w", i, e.Off, e.Len, len(e.Data), targets.ErrOutOfRange)
		}
		if e.Off < 0 || n < 0 || e.Off > math.MaxInt64-n {
			return nil, fmt.Errorf("plan page blob calls: extent %d: %d bytes at %d: %w", i, n, e.Off, targets.ErrOutOfRange)
		}
		if e.Off%bs != 0 || n%bs != 0 {
			return nil, fmt.Errorf("plan page blob calls: extent %d: %d bytes at %d, block size %d: %w", i, n, e.Off, bs, targets.ErrUnaligned)
		}
		if n == 0 {
			continue
		}
		// A start carries the extent's index, an end its complement
		// (negative): one slice holds both without a kind field.
		p.events = append(p.events,
			planEvent{pos: e.Off, ext: int32(i)},
			planEvent{pos: e.Off + n, ext: ^int32(i)})
	}
	p.sweep(exts)
	p.emit(exts)
	return p.calls, nil
}

// sweep resolves overlaps: it walks the extents' starts and ends in offset
// order, keeping the extents that cover the current offset in a max-heap by
// journal index, and records for each stretch between two events the extent
// on top (the last one written), joining stretches of the same extent.
func (p *Planner) sweep(exts []targets.Extent) {
	slices.SortFunc(p.events, func(a, b planEvent) int { return cmp.Compare(a.pos, b.pos) })
	p.heap = p.heap[:0]
	p.segs = p.segs[:0]
	end := func(i int32) int64 { return exts[i].Off + exts[i].Length() }
	for k := 0; k < len(p.events); {
		pos := p.events[k].pos
		for ; k < len(p.events) && p.events[k].pos == pos; k++ {
			if x := p.events[k].ext; x >= 0 {
				p.push(x)
			}
		}
		// Ends are lazy: drop covering extents that ended by now.
		for len(p.heap) > 0 && end(p.heap[0]) <= pos {
			p.pop()
		}
		if len(p.heap) == 0 || k == len(p.events) {
			continue
		}
		top, next := p.heap[0], p.events[k].pos
		if s := len(p.segs) - 1; s >= 0 && p.segs[s].ext == top && p.segs[s].off+p.segs[s].len == pos {
			p.segs[s].len += next - pos
			continue
		}
		p.segs = append(p.segs, planSeg{off: pos, len: next - pos, ext: top})
	}
}

func (p *Planner) push(x int32) {
	h := append(p.heap, x)
	for i := len(h) - 1; i > 0; {
		parent := (i - 1) / 2
		if h[parent] >= h[i] {
			break
		}
		h[parent], h[i] = h[i], h[parent]
		i = parent
	}
	p.heap = h
}

func (p *Planner) pop() {
	h := p.heap
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h[l] > h[m] {
			m = l
		}
		if r < n && h[r] > h[m] {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	p.heap = h
}

var zeroPage [planPage]byte

// emit turns the segments into calls: zero extents and all-zero pages of
// data into ClearPages, runs of other pages into PutPages of at most
// MaxPutPage.
func (p *Planner) emit(exts []targets.Extent) {
	p.calls = p.calls[:0]
	p.arena = p.arena[:0]
	p.curPieces = p.curPieces[:0]
	p.curLen = 0
	p.dataTotal, p.dataSeen = 0, 0
	for _, s := range p.segs {
		if exts[s.ext].Data != nil {
			p.dataTotal += s.len
		}
	}
	for _, s := range p.segs {
		e := &exts[s.ext]
		if e.Data == nil {
			p.clear(s.off, s.len)
			continue
		}
		d := e.Data[s.off-e.Off : s.off-e.Off+s.len]
		// Split d into runs of zero and non-zero pages.
		for i := 0; i < len(d); {
			zero := bytes.Equal(d[i:i+planPage], zeroPage[:])
			j := i + planPage
			for j < len(d) && bytes.Equal(d[j:j+planPage], zeroPage[:]) == zero {
				j += planPage
			}
			p.dataSeen += int64(j - i)
			if zero {
				p.clear(s.off+int64(i), int64(j-i))
			} else {
				p.put(s.off+int64(i), d[i:j])
			}
			i = j
		}
	}
	p.flushPut()
}

// clear adds a ClearPages of n bytes at off, joined to the previous call
// when that is a ClearPages ending at off.
func (p *Planner) clear(off, n int64) {
	p.flushPut()
	if k := len(p.calls) - 1; k >= 0 && p.calls[k].Kind == ClearPages && p.calls[k].Off+p.calls[k].Len == off {
		p.calls[k].Len += n
		return
	}
	p.calls = append(p.calls, Call{Kind: ClearPages, Off: off, Len: n})
}

// put adds data at off to the PutPages being built, starting a new one when
// it is not adjacent or would grow past MaxPutPage.
func (p *Planner) put(off int64, d []byte) {
	if p.curLen > 0 && p.curOff+p.curLen != off {
		p.flushPut()
	}
	for len(d) > 0 {
		if p.curLen == 0 {
			p.curOff = off
		}
		n := min(int64(len(d)), MaxPutPage-p.curLen)
		p.curPieces = append(p.curPieces, d[:n])
		p.curLen += n
		d, off = d[n:], off+n
		if p.curLen == MaxPutPage {
			p.flushPut()
		}
	}
}

// flushPut ends the PutPages being built: one piece is aliased, several are
// copied into the arena.
func (p *Planner) flushPut() {
	if p.curLen == 0 {
		return
	}
	var data []byte
	if len(p.curPieces) == 1 {
		data = p.curPieces[0]
	} else {
		if int64(cap(p.arena)-len(p.arena)) < p.curLen {
			// A new array with room for this call and up to one
			// more of what the plan may still copy; calls made so
			// far keep the old one.
			p.arena = make([]byte, 0, max(2*cap(p.arena), int(p.curLen+min(p.dataTotal-p.dataSeen, MaxPutPage))))
		}
		start := len(p.arena)
		for _, piece := range p.curPieces {
			p.arena = append(p.arena, piece...)
		}
		data = p.arena[start:len(p.arena):len(p.arena)]
	}
	p.calls = append(p.calls, Call{Kind: PutPages, Off: p.curOff, Len: p.curLen, Data: data})
	clear(p.curPieces) // drop references to the extents' data
	p.curPieces = p.curPieces[:0]
	p.curLen = 0
}
