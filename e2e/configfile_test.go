package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// lifeboat server starts from its configuration file alone (--config and
// nothing else), serves the admin API on the file's address, and stops
// cleanly on SIGTERM, as under its systemd unit. A wrong file stops the
// binary with exit code 2 and the file's line.
func TestServerFromConfigFile(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "server")
	run(t, binary, "server", "init", "--data-dir", dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(tmp, "server.yaml")
	body := "# the recovery site of this test\n" +
		"data-dir: " + dir + "\n" +
		"listen: \"" + addr + "\"\n" +
		"recovery-nbd: 127.0.0.1:0\n" +
		"retention: 2h\n" +
		"spool-quota: 1GiB\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := startProc(t, nil, func(_ *agentProc, line string) bool {
		return strings.HasPrefix(line, "process server listening on")
	}, "server", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := "process server listening on https://" + addr + " "; !strings.Contains(p.Output(), want) {
		t.Errorf("server output lacks %q:\n%s", want, p.Output())
	}
	s := &site{t: t, dir: dir, addr: addr}
	if r := s.cli("volume", "list", "--output", "json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("the server from the file does not serve: %s", r)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Errorf("server exit on SIGTERM: %v\n%s", err, p.Output())
	}

	bad := filepath.Join(tmp, "bad.yaml")
	os.WriteFile(bad, []byte("data-dir: "+dir+"\nlisten: [\""+addr+"\", \":9443\"]\n"), 0o600)
	r := lifeboat(t, "server", "--config", bad)
	if want := bad + ":2: listen takes one value, not a list"; r.code != 2 || !strings.Contains(r.stderr, want) {
		t.Errorf("want exit 2 with %q: %s", want, r)
	}
}
