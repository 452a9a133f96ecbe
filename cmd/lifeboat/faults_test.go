package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// The released binary, built as `make build` builds it (no build tags), has
// no fault injection: neither the variable nor the package is in it, and
// `server --help` says nothing of faults. The faultinject build (what the
// e2e tests run) has both, which shows the check looks for the right bytes.
func TestReleaseBinaryHasNoFaultInjection(t *testing.T) {
	markers := []string{"LIFEBOAT_FAULT", "lifeboat/internal/faultinject"}
	bin := buildBinary(t)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range markers {
		if bytes.Contains(b, []byte(m)) {
			t.Errorf("the release build contains %q: fault injection must build only with -tags faultinject", m)
		}
	}
	help, err := exec.Command(bin, "server", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("server --help: %v\n%s", err, help)
	}
	if regexp.MustCompile(`(?i)\bfault|LIFEBOAT_FAULT`).Match(help) { // not "default"
		t.Errorf("server --help mentions faults:\n%s", help)
	}
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(mk, []byte("faultinject")) {
		t.Error("the Makefile builds with the faultinject tag; only tests may")
	}

	tagged := filepath.Join(t.TempDir(), "lifeboat-faultinject")
	if out, err := exec.Command("go", "build", "-tags", "faultinject", "-o", tagged, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags faultinject: %v\n%s", err, out)
	}
	if b, err = os.ReadFile(tagged); err != nil {
		t.Fatal(err)
	}
	for _, m := range markers {
		if !bytes.Contains(b, []byte(m)) {
			t.Errorf("the faultinject build lacks %q: this test no longer finds what it looks for", m)
		}
	}
}
