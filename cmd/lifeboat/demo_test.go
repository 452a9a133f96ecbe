package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestDemo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	stdout, stderr, code := runApp(t, "demo", "--dir", dir, "--size", "16MiB")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, w := range []string{"MATCH", `recovery point "crash-1"`, `recovery point "app-1"`, "REF", "ZERO", "verify:      ok"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("output lacks %q:\n%s", w, stdout)
		}
	}
	if strings.Contains(stdout, "MISMATCH") {
		t.Errorf("output has MISMATCH:\n%s", stdout)
	}
	// Without --keep the demo removes what it created in --dir.
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("demo left %v (err %v) in %s", ents, err, dir)
	}
}

func TestDemoKeepAndUsage(t *testing.T) {
	dir := t.TempDir()
	if _, stderr, code := runApp(t, "demo", "--dir", dir, "--size", "8MiB", "--keep"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "journal")); err != nil {
		t.Errorf("--keep: %v", err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--dir", dir}, "already holds"},
		{[]string{"--size", "1MiB"}, "at least 8MiB"},
		{[]string{"--size", "64MB"}, "unknown unit"},
		{[]string{"extra"}, "want no arguments"},
	}
	for _, tt := range tests {
		_, stderr, code := runApp(t, append([]string{"demo"}, tt.args...)...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("demo %v: exit %d, stderr %q, want 2 and %q", tt.args, code, stderr, tt.want)
		}
	}
}

// TestBinary checks the process edges: exit codes and stderr of the built
// binary, and the version set with -ldflags.
func TestBinary(t *testing.T) {
	bin := buildBinary(t)
	jdir := copyDir(t, trackedJournal(t))
	segs := segmentFiles(t, jdir)
	run := func(args ...string) (string, int) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := run("version"); code != 0 || !strings.Contains(out, "lifeboat test-1.2.3") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	if out, code := run("journal", "verify", jdir); code != 0 {
		t.Errorf("verify clean: exit %d\n%s", code, out)
	}
	if out, code := run("journal", "verify"); code != 2 {
		t.Errorf("verify without DIR: exit %d, want 2\n%s", code, out)
	}
	if out, code := run("nonsense"); code != 2 || !strings.Contains(out, `unknown command "nonsense"`) {
		t.Errorf("unknown command: exit %d, want 2\n%s", code, out)
	}
	os.Remove(segs[1])
	if out, code := run("journal", "verify", jdir); code != 1 || !strings.Contains(out, "lifeboat: journal "+jdir+" does not verify") {
		t.Errorf("verify with a gap: exit %d, want 1\n%s", code, out)
	}
}
