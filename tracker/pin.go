package tracker

// regionSet is an in-memory set of regions, one bit each.
//
// Volume.pinned holds the dirty regions whose content the journal may lack:
// those dirty when a resync became necessary (at Open), written while the
// volume was in bitmap mode, or changed by records that were lost (a failed
// batch write or seal). An acknowledgement must not clear such a region
// (the acknowledged segment does not hold all of it); only a resync record
// that covers it unpins it. The set is a subset of the dirty bitmap: bits
// are pinned after Mark, and a pinned region is never cleared.
type regionSet []uint64

func (s regionSet) has(r int64) bool { return s[r/64]&(1<<(r%64)) != 0 }

// set adds [r0, r1).
func (s regionSet) set(r0, r1 int64) {
	for r := r0; r < r1; r++ {
		s[r/64] |= 1 << (r % 64)
	}
}

// unset removes [r0, r1).
func (s regionSet) unset(r0, r1 int64) {
	for r := r0; r < r1; r++ {
		s[r/64] &^= 1 << (r % 64)
	}
}

// span is a byte range [a0, a1) of the volume.
type span struct{ a0, a1 int64 }

// pinLocked pins the regions of [a0, a1).
func (v *Volume) pinLocked(a0, a1 int64) {
	if a1 > a0 {
		v.pinned.set(v.bitmap.regions(a0, a1-a0))
	}
}

// unpinCoveredLocked unpins the regions that a resync record for [a0, a1)
// completes: those ending inside it. The first one may start before a0: a
// resync walks each dirty range from its first region in order, so the
// records before this one covered the rest of it.
func (v *Volume) unpinCoveredLocked(a0, a1 int64) {
	r1 := a1 / v.RegionSize
	if a1 == v.size {
		r1 = v.bitmap.Regions()
	}
	v.pinned.unset(a0/v.RegionSize, r1)
}

// lostLocked pins the ranges of records that may have been in the writer's
// batch when a write of it failed: they are not in the journal.
func (v *Volume) lostLocked() {
	for _, s := range v.unflushed {
		v.pinLocked(s.a0, s.a1)
	}
	v.unflushed = v.unflushed[:0]
}

// pinnedRegions counts the regions that only a resync can clear.
func (v *Volume) pinnedRegions() int64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	var n int64
	for r := range v.bitmap.Regions() {
		if v.pinned.has(r) {
			n++
		}
	}
	return n
}
