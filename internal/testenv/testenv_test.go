package testenv_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"lifeboat/internal/testenv"
)

// TestToolsHelper is run by TestMissingToolSkipsOrFails in a child process
// whose PATH has no tools.
func TestToolsHelper(t *testing.T) {
	if os.Getenv("LIFEBOAT_TEST_CHILD") != "1" {
		t.Skip("run by TestMissingToolSkipsOrFails")
	}
	testenv.Tools(t, "losetup", "sh")
	t.Log("tools found")
}

// A missing tool skips the test, and with LIFEBOAT_REQUIRE_INTEGRATION=1
// (set by .ci/run) fails it, naming the tool.
func TestMissingToolSkipsOrFails(t *testing.T) {
	for _, tc := range []struct {
		require  string
		fails    bool
		contains []string
	}{
		{"", false, []string{"--- SKIP: TestToolsHelper", "not installed: losetup, sh", "run .ci/deps"}},
		{"0", false, []string{"--- SKIP: TestToolsHelper"}},
		{"1", true, []string{"--- FAIL: TestToolsHelper", "not installed: losetup, sh", testenv.EnvRequire + "=1 requires it"}},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestToolsHelper$", "-test.v")
		cmd.Env = append(os.Environ(), "LIFEBOAT_TEST_CHILD=1", testenv.EnvRequire+"="+tc.require, "PATH="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.fails {
			t.Fatalf("%s=%q: err %v, want failure %v:\n%s", testenv.EnvRequire, tc.require, err, tc.fails, out)
		}
		for _, want := range tc.contains {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s=%q: output lacks %q:\n%s", testenv.EnvRequire, tc.require, want, out)
			}
		}
	}
}
