package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestDemo(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // the demo's own temporary directory goes here
	stdout, stderr, code := runApp(t, "demo", "--size", "16MiB", "--rounds", "2")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, w := range []string{
		"[3/12] Initial replication", "walked", "first recovery point: seq",
		"[7/12] Test failover", "first NBD read returned after", "cleaned up in",
		"[8/12] Failover", "the agent was told and stopped shipping: volume failed over at the site",
		"round 1  ", "round 2  ", "RPO at the flush",
		"← after initial replication", "← after round 1", "← after round 2",
		"GET /v1/volumes/demo/points/latest", "(round 2)\n      MATCH: recovery point",
		"(initial replication)\n      MATCH: recovery point", "Summary", "= source at its tag",
		"[9/12] Writes at the recovery site", "it differs from the primary volume in",
		"[10/12] Reprotect", "agent stopped", "reprotect --verify:", "0 B rolled back", "first sync done in",
		"[11/12] Failback", "failed back in", "MATCH: the primary volume holds exactly the failover volume's bytes",
		"(the failback)\n      MATCH: recovery point",
		"[12/12] Forward replication again", "resync pending: none", "the new writes only, no initial replication",
		"(writes after the failback)\n      MATCH: recovery point",
		"      reprotect        ", "      failback         in ", "      forward again    ",
	} {
		if !strings.Contains(stdout, w) {
			t.Errorf("output lacks %q:\n%s", w, stdout)
		}
	}
	if strings.Contains(stdout, "MISMATCH") {
		t.Errorf("output has MISMATCH:\n%s", stdout)
	}
	if stderr != "" {
		t.Errorf("stderr (warnings or errors logged):\n%s", stderr)
	}
	if ents, err := os.ReadDir(tmp); err != nil || len(ents) != 0 {
		t.Errorf("demo left %v (err %v) in TMPDIR", ents, err)
	}
}

func TestDemoKeepAndUsage(t *testing.T) {
	dir := t.TempDir()
	stdout, stderr, code := runApp(t, "demo", "--dir", dir, "--size", "16MiB", "--rounds", "1", "--keep")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "kept "+dir) {
		t.Errorf("--keep: output does not say what it kept:\n%s", stdout)
	}
	for _, f := range []string{"server/pki/admin.crt", "server/replicas", "agent/demo.img", "agent/demo-agent.key", "agent/journal/demo",
		"master/pki/server.crt"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("--keep: %v", err)
		}
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--dir", dir}, "already holds"},
		{[]string{"--size", "8MiB"}, "at least 16MiB"},
		{[]string{"--size", "20000KiB"}, "in whole MiB"},
		{[]string{"--size", "64MB"}, "unknown unit"},
		{[]string{"--rounds", "0"}, "want 1 to 20"},
		{[]string{"extra"}, "want no arguments"},
	}
	for _, tt := range tests {
		_, stderr, code := runApp(t, append([]string{"demo"}, tt.args...)...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("demo %v: exit %d, stderr %q, want 2 and %q", tt.args, code, stderr, tt.want)
		}
	}
}

// TestDemoMismatch checks the verdict and the exit code of a point that
// does not hold the source's bytes.
func TestDemoMismatch(t *testing.T) {
	var out bytes.Buffer
	want := map[uint64]string{7: "aaaa"}
	labels := map[uint64]string{7: "round 1"}
	if err := checkPoint(&out, 7, "aaaa", want, labels); err != nil || !strings.Contains(out.String(), "MATCH: recovery point 7") {
		t.Errorf("equal hashes: %v\n%s", err, out.String())
	}
	for _, seq := range []uint64{7, 8} {
		out.Reset()
		err := checkPoint(&out, seq, "bbbb", want, labels)
		if exitCode(err) != exitFailed || !strings.Contains(out.String(), "MISMATCH") {
			t.Errorf("point %d: exit %d (%v), want 1 and MISMATCH in\n%s", seq, exitCode(err), err, out.String())
		}
	}
}

// TestDemoFailureKeepsDir checks the clean-up rules: a failure keeps the
// directory for analysis, an interruption or a success removes it.
func TestDemoFailureKeepsDir(t *testing.T) {
	for _, tt := range []struct {
		name        string
		err         error
		interrupted bool
		kept        bool
	}{
		{"success", nil, false, false},
		{"failure", failure("boom"), false, true},
		{"interrupted", context.Canceled, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "demo")
			if err := os.MkdirAll(filepath.Join(dir, "server"), 0o755); err != nil {
				t.Fatal(err)
			}
			var out, errw bytes.Buffer
			r := &demoRun{w: &out, dir: dir, site: &demoSite{serverDir: filepath.Join(dir, "server"), agentDir: filepath.Join(dir, "agent")}}
			err := r.finish(&errw, true, tt.err, tt.interrupted)
			if (err == nil) != (tt.err == nil) || tt.interrupted && !strings.Contains(fmt.Sprint(err), "interrupted") {
				t.Errorf("finish returned %v for %v", err, tt.err)
			}
			_, serr := os.Stat(dir)
			if kept := serr == nil; kept != tt.kept {
				t.Errorf("directory kept %v, want %v (stderr %q)", kept, tt.kept, errw.String())
			}
			if tt.kept && !strings.Contains(errw.String(), "kept "+dir+" for analysis") {
				t.Errorf("stderr %q does not say where the files are", errw.String())
			}
		})
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
