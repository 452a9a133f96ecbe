package failover_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"lifeboat/failover"
	"lifeboat/internal/backendtest"
	"lifeboat/targets"
)

// viewFactory returns a Factory of views over a point of a replica on a
// target of the kind: initial is applied to the replica in 1 MiB extents
// (zero MiBs as trims, so the point has holes), made a point, and a view
// opened over it with its overlay in t.TempDir().
func viewFactory(kind string) backendtest.Factory {
	return func(t *testing.T, size int64, initial []byte) backendtest.Backend {
		t.Helper()
		src := newSource(t, kind, "9d1f6a2e-3b7c-4e58-a0c4-1f2e3d4c5b6a", size)
		var exts []targets.Extent
		zero := make([]byte, 1<<20)
		for off := int64(0); off < size; off += 1 << 20 {
			c := initial[off:min(off+1<<20, size)]
			if bytes.Equal(c, zero[:len(c)]) {
				exts = append(exts, targets.Extent{Off: off, Len: int64(len(c)), Trim: true})
				continue
			}
			exts = append(exts, targets.Extent{Off: off, Data: c})
		}
		src.apply(exts...)
		v := src.openView(src.point(), filepath.Join(t.TempDir(), "overlay"))
		t.Cleanup(func() {
			if err := v.Close(); err != nil {
				t.Errorf("close view: %v", err)
			}
		})
		return v
	}
}

var _ backendtest.Backend = (*failover.View)(nil)

// The NBD export and the FUSE file of a view pass the same conformance
// suite as tracker.Volume (nbd and fusefs run it), over a point of each
// local target.
func TestConformanceView(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Run("NBD", func(t *testing.T) { backendtest.RunNBD(t, viewFactory(kind)) })
			t.Run("FUSE", func(t *testing.T) { backendtest.RunFUSE(t, viewFactory(kind)) })
		})
	}
}
