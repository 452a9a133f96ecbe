package targets

import "slices"

// ChangedBlocks is what a ChangeLister answers from the numbers of the
// blockSize blocks that may have changed since a point of pointSize bytes,
// on a volume of size bytes now: those blocks (sorted, merged) below
// pointSize, and all of [pointSize, size) when the volume grew since;
// every range ends at size. blocks is sorted in place.
func ChangedBlocks(blocks []int64, blockSize, pointSize, size int64) []Range {
	slices.Sort(blocks)
	var out []Range
	add := func(off, end int64) {
		if end = min(end, size); off >= end {
			return
		}
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len >= off {
			out[n-1].Len = max(out[n-1].Len, end-out[n-1].Off)
			return
		}
		out = append(out, Range{Off: off, Len: end - off})
	}
	for _, b := range slices.Compact(blocks) {
		if b*blockSize >= pointSize {
			break // in the part grown since the point, added whole below
		}
		add(b*blockSize, (b+1)*blockSize)
	}
	add(pointSize, size)
	return out
}
