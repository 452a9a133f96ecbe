// Package testenv decides what a test does when the machine lacks what it
// needs (a tool on PATH, root, /dev/fuse): it skips, so that `go test` works
// with only Go installed, unless LIFEBOAT_REQUIRE_INTEGRATION=1 (set by
// .ci/run) makes that a failure, so that CI never passes by skipping.
// Only tests import it.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// EnvRequire names the variable that turns a skip for something missing
// into a failure.
const EnvRequire = "LIFEBOAT_REQUIRE_INTEGRATION"

// Required reports whether integration tests must run (CI).
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Missing skips t with the message, or fails it when Required.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (%s=1 requires it)", msg, EnvRequire)
	}
	t.Skip(msg)
}

// Tools checks that every tool is on PATH; otherwise it names the missing
// ones and says how to install them (see Missing).
func Tools(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		Missing(t, "not installed: %s (run .ci/deps, or apt-get install the package that has it)", strings.Join(missing, ", "))
	}
}

// Root checks that the test runs as root; why says what needs it.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "%s needs root", why)
	}
}

// FUSE checks for root and /dev/fuse, what mounting a FUSE file system
// without the fusermount helper needs.
func FUSE(t testing.TB) {
	t.Helper()
	Root(t, "mounting FUSE")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Missing(t, "mounting FUSE needs /dev/fuse: %v", err)
	}
}
