package backendtest

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"lifeboat/tracker"
)

// TrackerVolume is the Factory of tracker.Volume, the backend the suites
// were first written for: a volume over a sparse file in t.TempDir() that
// holds initial before it is opened. nbd and fusefs run the suites with
// it.
func TrackerVolume(t *testing.T, size int64, initial []byte) Backend {
	t.Helper()
	dir := t.TempDir()
	backing := filepath.Join(dir, "disk.img")
	writeSparse(t, backing, initial[:size])
	v := tracker.NewVolume(backing, filepath.Join(dir, "journal"))
	v.SegmentAge = 0
	v.CheckpointInterval = 0
	v.Logger = slog.New(slog.DiscardHandler)
	if err := v.Open(context.Background()); err != nil {
		t.Fatalf("open volume: %v", err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Errorf("close volume: %v", err)
		}
	})
	return v
}
