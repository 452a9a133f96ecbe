package tracker_test

import (
	"testing"

	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// Churn counts the bytes each request changed, whatever their alignment,
// and only requests that succeeded.
func TestChurn(t *testing.T) {
	fsys := hrltest.New()
	fsys.WriteFile(backingPath, make([]byte, 1<<20))
	v := newVolume(t, fsys)
	openVolume(t, v)
	defer v.Close()
	if got := v.Churn(); got != (tracker.Churn{}) {
		t.Fatalf("churn of a volume just opened: got %+v, want zero", got)
	}
	writes := []struct{ off, n int64 }{{0, 4096}, {4097, 100}, {65536, 3 * 65536}, {1<<20 - 1, 1}}
	var want tracker.Churn
	for _, w := range writes {
		if _, err := v.WriteAt(make([]byte, w.n), w.off); err != nil {
			t.Fatal(err)
		}
		want.WrittenBytes += w.n
	}
	if err := v.WriteZeroes(8192, 1000); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(1<<19, 65536); err != nil {
		t.Fatal(err)
	}
	want.ZeroedBytes = 1000 + 65536
	if _, err := v.WriteAt(make([]byte, 10), 1<<20); err == nil { // beyond the end: refused, not counted
		t.Fatal("write beyond the end succeeded")
	}
	if got := v.Churn(); got != want {
		t.Errorf("churn: got %+v, want %+v", got, want)
	}
}
