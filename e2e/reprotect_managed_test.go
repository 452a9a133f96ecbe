package e2e

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// A volume unprotected, written to behind the agent's back, then protected
// again: the agent resyncs it in full, so the next point is the device as
// it is, not the old journal's idea of it.
func TestManagedReprotectResyncs(t *testing.T) {
	p := newCtlProtected(t, "16MiB", calmHeartbeats)
	s, a := p.s, p.a
	s.ok("unprotect", "--machine", "web01", "--volume", "disk")
	waitFor(t, 30*time.Second, "the agent to unprotect", func() bool { return strings.Contains(a.log(), "volume no longer protected") })
	waitFor(t, 30*time.Second, "the item to leave status", func() bool { return s.item("web01", "disk") == nil })

	f, err := os.OpenFile(p.img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 3<<20), 5<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	s.ok("protect", "--machine", "web01", "--volume", "disk="+p.img, "--policy", "gold", "--wait", "--timeout", "2m")
	p.settle(t0) // the latest point's export equals the file
	if !strings.Contains(a.log(), "volume protected again: its journal is from an earlier protection") {
		t.Error("the agent did not log the full resync of a volume protected again")
	}
}
