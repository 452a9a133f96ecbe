package hrl

// SetHashForTest replaces the dedupe block hash of w, so that tests can
// force collisions.
func SetHashForTest(w *Writer, h func([]byte) uint64) { w.hash = h }
