package tracker

import (
	"errors"
	"io"

	"lifeboat/hrl"
)

// Extent is a range of the volume that is either allocated data or a hole
// (reads as zeros, holds no storage).
type Extent struct {
	Offset, Length int64
	Hole           bool
}

// maxExtents bounds one Extents call, so that a badly fragmented file does
// not cost a system call per 4 KiB of a large range.
const maxExtents = 4096

// Extents describes the allocation of [off, off+n) in order, from the
// backing store's SEEK_DATA/SEEK_HOLE; a backing store that cannot tell
// reports everything as data. Adjacent extents alternate between data and
// holes. It may stop before off+n (after maxExtents extents); callers ask
// again from where it stopped.
func (v *Volume) Extents(off, n int64) ([]Extent, error) {
	if err := v.checkRange(off, n); err != nil || n == 0 {
		return nil, err
	}
	end := off + n
	sk, ok := v.backing.(hrl.Seeker)
	if !ok {
		return []Extent{{Offset: off, Length: n}}, nil
	}
	var out []Extent
	for pos := off; pos < end && len(out) < maxExtents; {
		data, err := sk.SeekData(pos)
		if errors.Is(err, io.EOF) {
			data = end
		} else if err != nil {
			// Some block devices refuse SEEK_DATA: all data then.
			return []Extent{{Offset: off, Length: n}}, nil
		}
		data = min(data, end)
		if data > pos {
			out = append(out, Extent{Offset: pos, Length: data - pos, Hole: true})
			pos = data
			continue
		}
		hole, err := sk.SeekHole(pos)
		if err != nil {
			return []Extent{{Offset: off, Length: n}}, nil
		}
		hole = min(max(hole, pos+1), end)
		out = append(out, Extent{Offset: pos, Length: hole - pos})
		pos = hole
	}
	return out, nil
}
