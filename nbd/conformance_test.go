package nbd_test

import (
	"testing"

	"lifeboat/internal/backendtest"
)

// tracker.Volume passes the conformance suite of the storage behind an
// export, which failover.View runs too.
func TestConformanceTrackerVolume(t *testing.T) {
	backendtest.RunNBD(t, backendtest.TrackerVolume)
}
