package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad NBD settings are usage errors (exit 2) that say what is wrong, before
// anything is opened; an --nbd path that is not a socket is one too.
func TestAgentNBDFlagErrors(t *testing.T) {
	dir := t.TempDir()
	notSocket := filepath.Join(dir, "file")
	os.WriteFile(notSocket, nil, 0o600)
	vol := "--volume=disk=" + filepath.Join(dir, "disk.img") + ",size=1MiB"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--nbd-max-connections", "0"}, "--nbd-max-connections 0: want at least 1"},
		{[]string{"--nbd-max-connections", "-2"}, "want at least 1"},
		{[]string{"--nbd-max-connections", "many"}, "many"},
		{[]string{"--nbd-max-inflight", "64MB"}, `unknown unit "MB"`},
		{[]string{"--nbd-max-inflight", "0"}, "want at least 512 bytes"},
		{[]string{"--nbd-max-inflight", "lots"}, "--nbd-max-inflight"},
		{[]string{"--nbd", "", "--nbd-max-inflight", "1MiB"}, "--nbd-max-inflight is set but NBD is disabled"},
		{[]string{"--nbd", "", "--fuse-mount", dir, "--nbd-max-connections", "3"}, "--nbd-max-connections is set but NBD is disabled"},
		{[]string{"--nbd", "", "--nbd", "unix:" + filepath.Join(dir, "s")}, "do not combine"},
		{[]string{"--nbd", "unix:/run/x.sock", "--nbd", "unix:/run/x.sock"}, "--nbd unix:/run/x.sock is given twice"},
		{[]string{"--nbd", "unix:", "--journal-dir", filepath.Join(dir, "j")}, "needs a path"},
		{[]string{"--nbd", "unix:" + notSocket, "--journal-dir", filepath.Join(dir, "j")}, "is not a socket; remove it"},
	} {
		args := append([]string{"agent", vol}, tt.args...)
		stdout, stderr, code := runApp(t, args...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("agent %q: exit %d, want 2 with %q\n%s%s", tt.args, code, tt.want, stdout, stderr)
		}
	}
}
