package fusefs_test

import (
	"testing"

	"lifeboat/internal/backendtest"
)

// tracker.Volume passes the conformance suite of the storage behind a FUSE
// file, which failover.View runs too.
func TestConformanceTrackerVolume(t *testing.T) {
	backendtest.RunFUSE(t, backendtest.TrackerVolume)
}
