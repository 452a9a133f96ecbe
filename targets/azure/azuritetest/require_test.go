package azuritetest_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"lifeboat/targets/azure/azuritetest"
)

// TestStartWithoutAzuriteHelper is run by TestRequireIntegration in a
// child process where Azurite cannot be found.
func TestStartWithoutAzuriteHelper(t *testing.T) {
	if os.Getenv("LIFEBOAT_TEST_CHILD") != "1" {
		t.Skip("run by TestRequireIntegration")
	}
	azuritetest.Start(t)
	t.Log("azurite started")
}

// Without Azurite, a test that needs it is skipped, and with
// LIFEBOAT_REQUIRE_INTEGRATION=1 (set by .ci/run) it fails instead.
func TestRequireIntegration(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		require  string
		fails    bool
		contains string
	}{
		{"", false, "--- SKIP: TestStartWithoutAzuriteHelper"},
		{"1", true, "--- FAIL: TestStartWithoutAzuriteHelper"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStartWithoutAzuriteHelper$", "-test.v")
		cmd.Env = append(os.Environ(), "LIFEBOAT_TEST_CHILD=1", azuritetest.EnvRequire+"="+tc.require,
			azuritetest.EnvBinary+"="+dir+"/none/azurite", "PATH="+dir, "XDG_CACHE_HOME="+dir)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.fails || !strings.Contains(string(out), tc.contains) {
			t.Fatalf("%s=%q: err %v, want failure %v and %q in:\n%s", azuritetest.EnvRequire, tc.require, err, tc.fails, tc.contains, out)
		}
		if tc.fails && !strings.Contains(string(out), "requires it") {
			t.Fatalf("the failure does not say why:\n%s", out)
		}
	}
}
