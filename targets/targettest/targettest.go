// Package targettest is the conformance suite every targets.Target must
// pass. Run it from the implementation's tests:
//
//	func TestConformance(t *testing.T) {
//		targettest.Run(t, func(t *testing.T) targets.Target {
//			return file.New(targettest.TempDir(t))
//		})
//	}
//
// The suite compares every recovery point and the latest content (read
// through a new point: Replica has no reader of the latest content), byte
// for byte, with a reference model kept in the test. Point fields must
// round-trip exactly; Time to the nanosecond, compared with
// time.Time.Equal (the location need not survive). Data comes from
// math/rand/v2 with fixed seeds, so a failure reproduces.
package targettest

import (
	"sync"
	"testing"

	"lifeboat/targets"
)

// Options say what a target supports.
type Options struct {
	// Persistent is true when replicas survive closing their Target, so
	// that a new Target opened by the same open func in the same subtest
	// finds them. The reopen, redo and cross-Target lock tests run only
	// then.
	Persistent bool
}

// Run runs the suite against a persistent target. Within one subtest,
// every call open(t) must return a new Target on the same storage (the
// first call's storage is empty); see TempDir.
func Run(t *testing.T, open func(t *testing.T) targets.Target) {
	RunOptions(t, Options{Persistent: true}, open)
}

// RunOptions runs the suite against a target with the given abilities.
// For a target that is not persistent, open is called once per subtest.
func RunOptions(t *testing.T, opts Options, open func(t *testing.T) targets.Target) {
	tests := []struct {
		name       string
		persistent bool
		fn         func(t *testing.T, open func(t *testing.T) targets.Target)
	}{
		{"Properties", false, testProperties},
		{"EmptyReplica", false, testEmpty},
		{"ApplyCommitState", false, testApplyCommit},
		{"WritesZerosOverlaps", false, testWrites},
		{"OutOfRange", false, testOutOfRange},
		{"Points", false, testPoints},
		{"PointsWhileApplying", false, testConcurrentReads},
		{"CreatePointIdempotent", false, testIdempotent},
		{"PointFields", false, testPointFields},
		{"DeletePoint", false, testDelete},
		{"DeleteRandomOrder", false, testDeleteRandom},
		{"Usage", false, testUsage},
		{"Resize", false, testResize},
		{"InUse", false, testInUse},
		{"Volumes", false, testVolumes},
		{"Closed", false, testClosed},
		{"Machine", false, testMachine},
		{"Reopen", true, testReopen},
		{"RedoInterruptedApply", true, testRedo},
		{"InUseAcrossTargets", true, testInUseAcross},
		{"MachineReopen", true, testMachineReopen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.persistent && !opts.Persistent {
				t.Skip("the target is not persistent")
			}
			tc.fn(t, open)
		})
	}
}

var (
	dirsMu sync.Mutex
	dirs   = map[*testing.T]string{}
)

// TempDir returns the same temporary directory for every call with the
// same t: the storage of a directory-backed target in one subtest.
func TempDir(t *testing.T) string {
	dirsMu.Lock()
	defer dirsMu.Unlock()
	if d, ok := dirs[t]; ok {
		return d
	}
	d := t.TempDir()
	dirs[t] = d
	t.Cleanup(func() {
		dirsMu.Lock()
		delete(dirs, t)
		dirsMu.Unlock()
	})
	return d
}
