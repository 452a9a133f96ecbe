package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/pipeline/pki"
)

// runCertsApp runs `lifeboat server init ...` and `lifeboat certs ...`
// in-process through an app of their own, configured like newApp, so the
// tests do not depend on where the commands are registered.
func runCertsApp(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	app := &cli.App{
		Name: "lifeboat", Writer: &out, ErrWriter: &errb, HideHelpCommand: true,
		DisableSliceFlagSeparator: true,
		ExitErrHandler:            func(*cli.Context, error) {},
		OnUsageError:              onUsageError,
		Action:                    unknownCommand,
		Commands: []*cli.Command{
			{Name: "server", Flags: []cli.Flag{&cli.StringFlag{Name: "data-dir", Value: "/nonexistent/default"}},
				OnUsageError: onUsageError, Action: unknownCommand, Subcommands: []*cli.Command{serverInitCommand()}},
			certsCommand(),
		},
	}
	err := app.RunContext(context.Background(), permuteArgs(app, append([]string{"lifeboat"}, args...)))
	if err != nil {
		errb.WriteString("lifeboat: " + err.Error() + "\n")
		code = exitCode(err)
	}
	return out.String(), errb.String(), code
}

func TestServerInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "server")
	stdout, stderr, code := runCertsApp(t, "server", "init", "--data-dir", dir, "--host", "backup.example.net", "--host", "10.0.0.5")
	if code != 0 {
		t.Fatalf("server init: exit %d\n%s%s", code, stdout, stderr)
	}
	p := pki.Paths(dir)
	for _, f := range []string{p.CACert, p.CAKey, p.ServerCert, p.ServerKey, p.AdminCert, p.AdminKey} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("server init did not create %s: %v", f, err)
		}
		if !strings.Contains(stdout, f) {
			t.Errorf("output does not name %s:\n%s", f, stdout)
		}
	}
	for _, want := range []string{"backup.example.net", "10.0.0.5", "127.0.0.1", "admin identity",
		"lifeboat certs issue --data-dir " + dir + " --name AGENT --out ./AGENT"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}

	caBefore, _ := os.ReadFile(p.CACert)
	keyBefore, _ := os.ReadFile(p.CAKey)
	stdout, stderr, code = runCertsApp(t, "server", "init", "--data-dir", dir)
	if code != 1 || !strings.Contains(stderr, "already exists") || !strings.Contains(stderr, "lifeboat certs issue") {
		t.Errorf("second server init: exit %d, want 1 with a message\n%s%s", code, stdout, stderr)
	}
	caAfter, _ := os.ReadFile(p.CACert)
	keyAfter, _ := os.ReadFile(p.CAKey)
	if !bytes.Equal(caBefore, caAfter) || !bytes.Equal(keyBefore, keyAfter) {
		t.Errorf("second server init changed the CA")
	}
}

func TestServerInitParentDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "server")
	if stdout, stderr, code := runCertsApp(t, "server", "--data-dir", dir, "init"); code != 0 {
		t.Fatalf("server --data-dir DIR init: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, err := pki.Load(dir); err != nil {
		t.Errorf("server --data-dir DIR init did not create the CA in DIR: %v", err)
	}
}

func TestServerInitUsage(t *testing.T) {
	for _, args := range [][]string{
		{"server", "init", "--data-dir", ""},
		{"server", "init", "--data-dir", t.TempDir(), "--host", "host:9443"},
		{"server", "init", "--data-dir", t.TempDir(), "extra"},
	} {
		if stdout, stderr, code := runCertsApp(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s%s", args, code, stdout, stderr)
		}
	}
}

func TestCertsIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "server")
	if _, stderr, code := runCertsApp(t, "server", "init", "--data-dir", dir); code != 0 {
		t.Fatalf("server init: %s", stderr)
	}
	out := filepath.Join(t.TempDir(), "web01")
	stdout, stderr, code := runCertsApp(t, "certs", "issue", "--data-dir", dir, "--name", "web01", "--out", out)
	if code != 0 {
		t.Fatalf("certs issue: exit %d\n%s%s", code, stdout, stderr)
	}
	certFile, keyFile, caFile := filepath.Join(out, "web01.crt"), filepath.Join(out, "web01.key"), filepath.Join(out, "ca.crt")
	flags := "--cert " + certFile + " --key " + keyFile + " --ca " + caFile
	if !strings.Contains(stdout, flags) || !strings.Contains(stdout, "issued an agent certificate for web01") {
		t.Errorf("output lacks the paths and the agent flags %q:\n%s", flags, stdout)
	}
	if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v, want mode 0600", st, err)
	}

	// The files work: a TLS 1.3 handshake with the server, which sees web01.
	cli, err := pki.ClientTLS(certFile, keyFile, caFile)
	if err != nil {
		t.Fatalf("ClientTLS on the issued files: %v", err)
	}
	srv, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if name, role := certsHandshake(t, srv, cli); name != "web01" || role != pki.RoleAgent {
		t.Errorf("server saw %q %q, want web01 agent", name, role)
	}

	// Issuing again into the same directory never replaces the key.
	stdout, stderr, code = runCertsApp(t, "certs", "issue", "--data-dir", dir, "--name", "web01", "--out", out)
	if code != 1 || !strings.Contains(stderr, "never overwritten") {
		t.Errorf("second certs issue: exit %d, want 1\n%s%s", code, stdout, stderr)
	}

	// An admin with a short validity, and a server with its hosts.
	stdout, _, code = runCertsApp(t, "certs", "issue", "--data-dir", dir, "--name", "alice", "--role", "admin", "--valid-for", "24h", "--out", out)
	admin, err := pki.ReadCertificate(filepath.Join(out, "alice.crt"))
	if code != 0 || err != nil || admin.Subject.OrganizationalUnit[0] != "admin" || time.Until(admin.NotAfter) > 25*time.Hour {
		t.Errorf("certs issue --role admin --valid-for 24h: exit %d, %v\n%s", code, err, stdout)
	}
	stdout, _, code = runCertsApp(t, "certs", "issue", "--data-dir", dir, "--name", "ps2", "--role", "server", "--host", "ps2.example.net", "--out", out)
	ps2, err := pki.ReadCertificate(filepath.Join(out, "ps2.crt"))
	if code != 0 || err != nil || ps2.VerifyHostname("ps2.example.net") != nil {
		t.Errorf("certs issue --role server: exit %d, %v\n%s", code, err, stdout)
	}
}

// certsHandshake connects cli to a server with srv over 127.0.0.1 and
// returns the client's name and role as the server saw them.
func certsHandshake(t *testing.T, srv, cli *tls.Config) (string, pki.Role) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type seen struct {
		name string
		role pki.Role
		err  error
	}
	ch := make(chan seen, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- seen{err: err}
			return
		}
		tc := tls.Server(c, srv)
		defer tc.Close()
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			ch <- seen{err: err}
			return
		}
		name, role, err := pki.Peer(tc.ConnectionState())
		if err == nil {
			_, err = tc.Write([]byte("k"))
		}
		ch <- seen{name, role, err}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("read: %v", err)
	}
	s := <-ch
	if s.err != nil {
		t.Fatalf("server: %v", s.err)
	}
	return s.name, s.role
}

func TestCertsIssueUsage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "server")
	if _, stderr, code := runCertsApp(t, "server", "init", "--data-dir", dir); code != 0 {
		t.Fatalf("server init: %s", stderr)
	}
	out := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--data-dir", dir, "--out", out}, "--name is required"},
		{[]string{"--data-dir", "", "--name", "web01", "--out", out}, "--data-dir is empty"},
		{[]string{"--data-dir", dir, "--name", "web01"}, "--out is required"},
		{[]string{"--data-dir", dir, "--name", "web01", "--role", "root", "--out", out}, "--role \"root\""},
		{[]string{"--data-dir", dir, "--name", "web01", "--host", "x.example", "--out", out}, "only for --role server"},
		{[]string{"--data-dir", dir, "--name", "ps2", "--role", "server", "--out", out}, "needs --host"},
		{[]string{"--data-dir", dir, "--name", "web01", "--valid-for", "-1h", "--out", out}, "positive duration"},
		{[]string{"--data-dir", dir, "--name", "web01", "--valid-for", "soon", "--out", out}, "valid-for"},
		{[]string{"--data-dir", dir, "--name", "../web01", "--out", out}, "invalid name"},
		{[]string{"--data-dir", dir, "--name", "ca", "--out", out}, "reserved"},
	}
	for _, tt := range tests {
		stdout, stderr, code := runCertsApp(t, append([]string{"certs", "issue"}, tt.args...)...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("certs issue %v: exit %d, want 2 with %q\n%s%s", tt.args, code, tt.want, stdout, stderr)
		}
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("rejected commands wrote %d files into --out", len(ents))
	}

	// No CA: exit 1, saying to run server init.
	stdout, stderr, code := runCertsApp(t, "certs", "issue", "--data-dir", t.TempDir(), "--name", "web01", "--out", out)
	if code != 1 || !strings.Contains(stderr, "lifeboat server init --data-dir") {
		t.Errorf("certs issue without a CA: exit %d\n%s%s", code, stdout, stderr)
	}
}

func TestCertsHelp(t *testing.T) {
	for _, args := range [][]string{{"server", "init", "--help"}, {"certs", "--help"}, {"certs", "issue", "--help"}} {
		stdout, stderr, code := runCertsApp(t, args...)
		if code != 0 || !strings.Contains(stdout, "lifeboat") || !strings.Contains(stdout, "xample") {
			t.Errorf("%v: exit %d, no example in help:\n%s%s", args, code, stdout, stderr)
		}
	}
	if _, stderr, code := runCertsApp(t, "certs", "nope"); code != 2 || !strings.Contains(stderr, `"nope"`) {
		t.Errorf("certs nope: exit %d, %s", code, stderr)
	}
}
