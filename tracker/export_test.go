package tracker

// ClearBitmapForTest marks every region clean and persists it, as a
// completed initial replication would.
func ClearBitmapForTest(v *Volume) error {
	v.mu.Lock()
	clear(v.pinned)
	v.mu.Unlock()
	for r := range v.bitmap.Regions() {
		v.bitmap.Clear(r)
	}
	return v.bitmap.Sync()
}

// PinnedRegions counts the regions that only a resync can clear.
func PinnedRegions(v *Volume) int64 { return v.pinnedRegions() }

// OpenSegmentInMemory reports whether the open segment is held in memory
// (copy.go).
func OpenSegmentInMemory(v *Volume) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.w != nil && v.wMem
}
