package pki_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/pipeline/pki"
)

func TestIdentityWrite(t *testing.T) {
	ca, _ := initCA(t)
	id, err := ca.Issue("web01", pki.RoleAgent, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out", "web01")
	if err := id.Write(out, "web01"); err != nil {
		t.Fatalf("Write: %v", err)
	}
	for name, want := range map[string]struct {
		data []byte
		perm os.FileMode
	}{
		"web01.crt": {id.CertPEM, 0o644}, "web01.key": {id.KeyPEM, 0o600}, "ca.crt": {id.CAPEM, 0o644},
	} {
		path := filepath.Join(out, name)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.data) {
			t.Errorf("%s does not hold what was issued", name)
		}
		if st, _ := os.Stat(path); st.Mode().Perm() != want.perm {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), want.perm)
		}
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %v, want 0700", st.Mode().Perm())
	}
	if _, err := pki.ClientTLS(filepath.Join(out, "web01.crt"), filepath.Join(out, "web01.key"), filepath.Join(out, "ca.crt")); err != nil {
		t.Errorf("ClientTLS on the written files: %v", err)
	}

	// A second identity of the same CA may share the directory.
	other, _ := ca.Issue("web02", pki.RoleAgent, nil, 0)
	if err := other.Write(out, "web02"); err != nil {
		t.Errorf("Write of a second identity of the same CA: %v", err)
	}

	// A key is never overwritten.
	again, _ := ca.Issue("web01", pki.RoleAgent, nil, 0)
	err = again.Write(out, "web01")
	if !errors.Is(err, pki.ErrExists) || !strings.Contains(err.Error(), "never overwritten") {
		t.Errorf("Write over an existing key: %v, want ErrExists", err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "web01.key")); !bytes.Equal(got, id.KeyPEM) {
		t.Errorf("Write replaced an existing key")
	}
	if got, _ := os.ReadFile(filepath.Join(out, "web01.crt")); !bytes.Equal(got, id.CertPEM) {
		t.Errorf("a refused Write replaced the certificate")
	}

	// Another CA's identity may not replace ca.crt.
	ca2, _ := initCA(t)
	foreign, _ := ca2.Issue("web03", pki.RoleAgent, nil, 0)
	if err := foreign.Write(out, "web03"); err == nil || !strings.Contains(err.Error(), "another CA") {
		t.Errorf("Write of another CA's identity: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "web03.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused Write left web03.key")
	}

	ents, _ := os.ReadDir(out)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func TestIdentityWriteRejects(t *testing.T) {
	ca, _ := initCA(t)
	id, _ := ca.Issue("web01", pki.RoleAgent, nil, 0)
	other, _ := ca.Issue("web02", pki.RoleAgent, nil, 0)
	dir := t.TempDir()
	for _, name := range []string{"ca", "", "../x", "a/b"} {
		if err := id.Write(dir, name); !errors.Is(err, pki.ErrName) {
			t.Errorf("Write(%q): %v, want ErrName", name, err)
		}
	}
	mixed := pki.Identity{CertPEM: id.CertPEM, KeyPEM: other.KeyPEM, CAPEM: id.CAPEM}
	if err := mixed.Write(dir, "mixed"); err == nil || !strings.Contains(err.Error(), "do not belong together") {
		t.Errorf("Write of a certificate with another key: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("rejected Writes left %d files", len(ents))
	}
}
