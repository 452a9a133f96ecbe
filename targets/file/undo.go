package file

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/cespare/xxhash/v2"

	"lifeboat/hrl"
)

// An undo log holds before-images of 4 KiB blocks of replica.img: the undo
// log of point P_i holds the content at P_i of every block first
// overwritten after P_i and before P_i+1. It is a sequence of entries, each
// a fixed header and the block's bytes (no bytes for an all-zero block):
//
//	 0        4        8                16               24       28       32
//	+--------+--------+----------------+----------------+--------+--------+--------------+
//	| magic  | flags  | block number   | xxhash64(data) | length | hsum   | data ...     |
//	| "LBU1" | bit0:  | (offset/4096)  | 0 when zero    | bytes  | xxhash |  length bytes|
//	|        |  zero  |                |                |        | [0:28] |  unless zero |
//	+--------+--------+----------------+----------------+--------+--------+--------------+
//
// All integers are little-endian; hsum is the low 32 bits of xxhash64 of
// the first 28 header bytes. An entry is written and fsynced before its
// block is overwritten, so an intact entry is the true before-image. A torn
// tail (an entry that fails its checksums) is cut on open; state.json
// records each log's length, and an invalid entry before it is corruption.
// When a block has several entries (a merge redone after a crash), the
// first one counts.
const (
	entryMagic  = 0x3155424c // "LBU1"
	headerSize  = 32
	flagZero    = 1
	scanWindow  = 256 << 10
	maxEntryLen = blockSize
)

var zeroBlock [blockSize]byte

// ref locates one entry of an undo log.
type ref struct {
	block int64
	off   int64 // of the header
	n     int32 // block length in bytes
	zero  bool
}

func (r ref) size() int64 {
	if r.zero {
		return headerSize
	}
	return headerSize + int64(r.n)
}

// putHeader encodes the header of the entry for block with data (nil or
// all zeros: a zero entry of n bytes) into h.
func putHeader(h []byte, block int64, n int, data []byte) (zero bool) {
	var flags uint32
	var sum uint64
	if data == nil {
		flags = flagZero
	} else {
		sum = xxhash.Sum64(data)
	}
	binary.LittleEndian.PutUint32(h[0:], entryMagic)
	binary.LittleEndian.PutUint32(h[4:], flags)
	binary.LittleEndian.PutUint64(h[8:], uint64(block))
	binary.LittleEndian.PutUint64(h[16:], sum)
	binary.LittleEndian.PutUint32(h[24:], uint32(n))
	binary.LittleEndian.PutUint32(h[28:], uint32(xxhash.Sum64(h[:28])))
	return data == nil
}

// parseHeader decodes a header; ok is false when it is not an intact one.
func parseHeader(h []byte) (r ref, dsum uint64, ok bool) {
	if binary.LittleEndian.Uint32(h[0:]) != entryMagic ||
		binary.LittleEndian.Uint32(h[28:]) != uint32(xxhash.Sum64(h[:28])) {
		return r, 0, false
	}
	flags := binary.LittleEndian.Uint32(h[4:])
	r.block = int64(binary.LittleEndian.Uint64(h[8:]))
	dsum = binary.LittleEndian.Uint64(h[16:])
	n := binary.LittleEndian.Uint32(h[24:])
	if flags&^flagZero != 0 || r.block < 0 || n == 0 || n > maxEntryLen {
		return r, 0, false
	}
	r.n, r.zero = int32(n), flags&flagZero != 0
	return r, dsum, true
}

// undoLog is one point's undo log and its in-memory index: a map while it
// is the newest (receiving entries), a sorted slice once closed.
type undoLog struct {
	seq    uint64
	path   string
	f      hrl.File
	size   int64         // bytes of intact entries, all durable
	open   map[int64]ref // index of the newest log
	sorted []ref         // index of a closed log, by block
}

func (u *undoLog) lookup(block int64) (ref, bool) {
	if u.open != nil {
		r, ok := u.open[block]
		return r, ok
	}
	i := sort.Search(len(u.sorted), func(i int) bool { return u.sorted[i].block >= block })
	if i < len(u.sorted) && u.sorted[i].block == block {
		return u.sorted[i], true
	}
	return ref{}, false
}

// refs returns the entries ordered by offset.
func (u *undoLog) refs() []ref {
	var out []ref
	if u.open != nil {
		out = make([]ref, 0, len(u.open))
		for _, r := range u.open {
			out = append(out, r)
		}
	} else {
		out = slices.Clone(u.sorted)
	}
	slices.SortFunc(out, func(a, b ref) int { return cmp.Compare(a.off, b.off) })
	return out
}

// setOpen makes the index a map (the log is the newest) or a sorted slice.
func (u *undoLog) setOpen(open bool) {
	switch {
	case open && u.open == nil:
		u.open = make(map[int64]ref, len(u.sorted))
		for _, r := range u.sorted {
			u.open[r.block] = r
		}
		u.sorted = nil
	case !open && u.open != nil:
		u.sorted = make([]ref, 0, len(u.open))
		for _, r := range u.open {
			u.sorted = append(u.sorted, r)
		}
		slices.SortFunc(u.sorted, func(a, b ref) int { return cmp.Compare(a.block, b.block) })
		u.open = nil
	}
}

// add indexes new entries (appended after every existing one), keeping
// the first entry of a block.
func (u *undoLog) add(rs []ref) {
	if u.open != nil {
		for _, r := range rs {
			if _, dup := u.open[r.block]; !dup {
				u.open[r.block] = r
			}
		}
		return
	}
	merged := make([]ref, 0, len(u.sorted)+len(rs))
	merged = append(merged, u.sorted...)
	for _, r := range rs {
		if _, dup := u.lookup(r.block); !dup {
			merged = append(merged, r)
		}
	}
	slices.SortStableFunc(merged, func(a, b ref) int { return cmp.Compare(a.block, b.block) })
	u.sorted = slices.CompactFunc(merged, func(a, b ref) bool { return a.block == b.block })
}

// scan reads the entries of u.f and builds the index (as a map). Entries
// before committed must be intact (their data is checked when read). With
// tail set, entries after it are read too, data checked, and the first
// invalid one ends the log (a torn tail). It returns the length of the
// entries indexed.
func (u *undoLog) scan(committed int64, tail bool) (int64, error) {
	fileSize, err := u.f.Size()
	if err != nil {
		return 0, fmt.Errorf("undo log %s: %w", u.path, err)
	}
	if fileSize < committed {
		return 0, fmt.Errorf("undo log %s is %d bytes, shorter than the %d recorded in state.json: %w", u.path, fileSize, committed, ErrCorrupt)
	}
	win := make([]byte, scanWindow)
	var winOff, winEnd int64 // win holds the file's bytes [winOff, winEnd)
	fill := func(off, need int64) error {
		if off >= winOff && off+need <= winEnd {
			return nil
		}
		n, err := u.f.ReadAt(win[:min(int64(len(win)), fileSize-off)], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		winOff, winEnd = off, off+int64(n)
		if off+need > winEnd {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	idx := map[int64]ref{}
	limit := committed
	if tail {
		limit = fileSize
	}
	var off int64
	for off < limit {
		past := off >= committed
		if fileSize-off < headerSize {
			if !past {
				return 0, fmt.Errorf("undo log %s: truncated header at %d: %w", u.path, off, ErrCorrupt)
			}
			break
		}
		if err := fill(off, headerSize); err != nil {
			return 0, fmt.Errorf("undo log %s: %w", u.path, err)
		}
		r, dsum, ok := parseHeader(win[off-winOff:])
		if ok && off+r.size() > fileSize {
			ok = false
		}
		if ok && !past && off+r.size() > committed {
			ok = false
		}
		if ok && past && !r.zero {
			if err := fill(off, r.size()); err != nil {
				return 0, fmt.Errorf("undo log %s: %w", u.path, err)
			}
			d := win[off-winOff+headerSize : off-winOff+r.size()]
			ok = xxhash.Sum64(d) == dsum
		}
		if !ok {
			if !past {
				return 0, fmt.Errorf("undo log %s: damaged entry at %d (before the recorded length %d): %w", u.path, off, committed, ErrCorrupt)
			}
			break
		}
		r.off = off
		if _, dup := idx[r.block]; !dup {
			idx[r.block] = r
		}
		off += r.size()
	}
	u.open = idx
	return off, nil
}

// readEntry returns the block bytes of entry r, read into buf (at least
// headerSize+blockSize long) and checked against both checksums. A zero
// entry reads as zeros without I/O.
func (u *undoLog) readEntry(r ref, buf []byte) ([]byte, error) {
	if r.zero {
		return zeroBlock[:r.n], nil
	}
	b := buf[:r.size()]
	if _, err := u.f.ReadAt(b, r.off); err != nil {
		return nil, fmt.Errorf("undo log %s: read entry at %d: %w", u.path, r.off, err)
	}
	h, dsum, ok := parseHeader(b)
	if !ok || h.block != r.block || h.n != r.n || xxhash.Sum64(b[headerSize:]) != dsum {
		return nil, fmt.Errorf("undo log %s: entry at %d for block %d fails its checksum: %w", u.path, r.off, r.block, ErrCorrupt)
	}
	return b[headerSize:], nil
}
