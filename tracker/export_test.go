package tracker

// ClearBitmapForTest marks every region clean and persists it, as a
// completed initial replication would.
func ClearBitmapForTest(v *Volume) error {
	for r := range v.bitmap.Regions() {
		v.bitmap.Clear(r)
	}
	return v.bitmap.Sync()
}
