package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"lifeboat/pipeline/pki"
)

// certsSite runs server init and issues web01 twice (two directories) and
// an admin alice; it returns the data directory.
func certsSite(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "server")
	for _, args := range [][]string{
		{"server", "init", "--data-dir", dir},
		{"certs", "issue", "--data-dir", dir, "--name", "web01", "--out", filepath.Join(t.TempDir(), "a")},
		{"certs", "issue", "--data-dir", dir, "--name", "web01", "--out", filepath.Join(t.TempDir(), "b")},
		{"certs", "issue", "--data-dir", dir, "--name", "alice", "--role", "admin", "--out", filepath.Join(t.TempDir(), "c")},
	} {
		if stdout, stderr, code := runCertsApp(t, args...); code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, stdout, stderr)
		}
	}
	return dir
}

func certsListJSON(t *testing.T, dir string) []pki.IssuedCert {
	t.Helper()
	stdout, stderr, code := runCertsApp(t, "certs", "list", "--data-dir", dir, "--output", "json")
	if code != 0 {
		t.Fatalf("certs list: exit %d\n%s", code, stderr)
	}
	var certs []pki.IssuedCert
	if err := json.Unmarshal([]byte(stdout), &certs); err != nil {
		t.Fatalf("certs list --output json: %v\n%s", err, stdout)
	}
	return certs
}

func TestCertsRevokeAndList(t *testing.T) {
	dir := certsSite(t)
	stdout, stderr, code := runCertsApp(t, "certs", "list", "--data-dir", dir)
	if code != 0 || strings.Count(stdout, " valid\n") != 5 || !strings.HasPrefix(stdout, "HOLDER") {
		t.Fatalf("certs list: exit %d, want 5 valid certificates\n%s%s", code, stdout, stderr)
	}
	// Issuing into a directory that has the key already issues nothing,
	// so records nothing.
	out := filepath.Join(t.TempDir(), "again")
	runCertsApp(t, "certs", "issue", "--data-dir", dir, "--name", "web02", "--out", out)
	if _, _, code := runCertsApp(t, "certs", "issue", "--data-dir", dir, "--name", "web02", "--out", out); code != 1 {
		t.Errorf("second certs issue into the same directory: exit %d, want 1", code)
	}
	if n := len(certsListJSON(t, dir)); n != 6 {
		t.Errorf("registry holds %d certificates, want 6 (a refused issue records nothing)", n)
	}

	stdout, stderr, code = runCertsApp(t, "certs", "revoke", "--data-dir", dir, "--name", "web01", "--reason", "disk stolen")
	if code != 0 {
		t.Fatalf("certs revoke: exit %d\n%s%s", code, stdout, stderr)
	}
	var web01 []string
	for _, c := range certsListJSON(t, dir) {
		if c.Holder == "web01" {
			web01 = append(web01, c.Serial)
			if c.Status != pki.StatusRevoked || c.Reason != "disk stolen" || c.RevokedAt == nil {
				t.Errorf("after revoke: %+v", c)
			}
		} else if c.Status != pki.StatusValid {
			t.Errorf("revoking web01 changed %+v", c)
		}
	}
	for _, want := range append(web01, "revoked 2 certificates", "from the next", "without a restart", pki.Paths(dir).CRL,
		"lifeboat certs issue --data-dir "+dir+" --name web01") {
		if !strings.Contains(stdout, want) {
			t.Errorf("certs revoke output lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, _ = runCertsApp(t, "certs", "list", "--data-dir", dir)
	if n := strings.Count(stdout, "revoked at "); n != 2 || !strings.Contains(stdout, "(disk stolen)") {
		t.Errorf("certs list after revoke:\n%s", stdout)
	}

	// By serial: alice.
	var alice string
	for _, c := range certsListJSON(t, dir) {
		if c.Holder == "alice" {
			alice = c.Serial
		}
	}
	if stdout, stderr, code := runCertsApp(t, "certs", "revoke", "--data-dir", dir, "--serial", alice); code != 0 ||
		!strings.Contains(stdout, "revoked 1 certificate") || !strings.Contains(stdout, alice) {
		t.Errorf("certs revoke --serial: exit %d\n%s%s", code, stdout, stderr)
	}
}

func TestCertsRevokeRefusals(t *testing.T) {
	dir := certsSite(t)
	if _, stderr, code := runCertsApp(t, "certs", "revoke", "--data-dir", dir, "--name", "web01"); code != 0 {
		t.Fatal(stderr)
	}
	before, _ := os.ReadFile(pki.Paths(dir).CRL)
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--name", "web99"}, 1, "lifeboat certs list --data-dir " + dir},
		{[]string{"--serial", "abcdef"}, 1, "lifeboat certs list --data-dir " + dir},
		{[]string{"--name", "web01"}, 1, "nothing to revoke"},
		{[]string{"--name", "server"}, 1, "server certificate"},
		{[]string{"--serial", "xyz"}, 2, "invalid serial"},
		{[]string{"--name", "web01", "--serial", "ab"}, 2, "not both"},
		{nil, 2, "--name NAME"},
		{[]string{"--name", "alice", "--reason", "a\nb"}, 1, "one line"},
		{[]string{"--name", "alice", "extra"}, 2, "no arguments"},
	} {
		args := append([]string{"certs", "revoke", "--data-dir", dir}, tt.args...)
		stdout, stderr, code := runCertsApp(t, args...)
		if code != tt.code || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, want %d with %q\n%s%s", tt.args, code, tt.code, tt.want, stdout, stderr)
		}
	}
	if after, _ := os.ReadFile(pki.Paths(dir).CRL); string(after) != string(before) {
		t.Errorf("a refused revoke changed ca.crl")
	}
	if _, stderr, code := runCertsApp(t, "certs", "revoke", "--data-dir", t.TempDir(), "--name", "x"); code != 1 ||
		!strings.Contains(stderr, "server init") {
		t.Errorf("certs revoke without a CA: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := runCertsApp(t, "certs", "list", "--data-dir", dir, "--output", "yaml"); code != 2 {
		t.Errorf("certs list --output yaml: exit %d\n%s", code, stderr)
	}
}

// The JSON of certs list is a contract: its keys are pinned by a golden
// file (serials and times replaced, they change at every run).
func TestGoldenCertsList(t *testing.T) {
	dir := certsSite(t)
	if _, stderr, code := runCertsApp(t, "certs", "revoke", "--data-dir", dir, "--name", "alice", "--reason", "left"); code != 0 {
		t.Fatal(stderr)
	}
	stdout, _, _ := runCertsApp(t, "certs", "list", "--data-dir", dir, "--output", "json")
	got := regexp.MustCompile(`"serial": "[0-9a-f]+"`).ReplaceAllString(stdout, `"serial": "SERIAL"`)
	got = regexp.MustCompile(`"\d{4}-\d\d-\d\dT[0-9:.]+Z"`).ReplaceAllString(got, `"TIME"`)
	golden(t, "certs_list.json", got)
}
