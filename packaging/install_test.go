// Package packaging holds the systemd units that 'make install' installs;
// its test runs make install and uninstall into a temporary root.
package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/internal/testenv"
)

var units = map[string]string{ // unit -> role
	"lifeboat-agent.service":          "agent",
	"lifeboat-server.service":         "server",
	"lifeboat-process-server.service": "process-server",
}

// makeIn runs make in the repository with args and returns its output.
func makeIn(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("make", append([]string{"-C", "..", "--no-print-directory"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// make install DESTDIR=... puts the binary, the units and the example
// configurations in place, keeps a configuration that exists, and make
// uninstall removes the binary and units but keeps the configurations.
func TestMakeInstall(t *testing.T) {
	testenv.Tools(t, "make")
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	bin := filepath.Join(tmp, "build", "lifeboat")
	vars := []string{"DESTDIR=" + root, "BIN=" + bin}
	out := makeIn(t, append([]string{"install"}, vars...)...)
	for _, want := range []string{"Next steps:", "systemctl daemon-reload && systemctl enable --now lifeboat-agent",
		"lifeboat server init --data-dir /var/lib/lifeboat/server"} {
		if !strings.Contains(out, want) {
			t.Errorf("make install does not say %q:\n%s", want, out)
		}
	}
	installed := filepath.Join(root, "usr/local/bin/lifeboat")
	if st, err := os.Stat(installed); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v, %v", st, err)
	}
	for unit, role := range units {
		path := filepath.Join(root, "etc/systemd/system", unit)
		text := readFile(t, path)
		want := "\nExecStart=/usr/local/bin/lifeboat " + role + " --config /etc/lifeboat/" + role + ".yaml\n"
		if !strings.Contains(text, want) || !strings.Contains(text, "\nRestart=on-failure\n") {
			t.Errorf("%s: want %q and Restart=on-failure:\n%s", unit, want, text)
		}
		if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", unit, st.Mode().Perm())
		}
		cfg := filepath.Join(root, "etc/lifeboat", role+".yaml")
		example, err := exec.Command(installed, "config", "example", role).Output()
		if err != nil || readFile(t, cfg) != string(example) {
			t.Errorf("%s is not 'lifeboat config example %s' (%v)", cfg, role, err)
		}
	}
	cfg := filepath.Join(root, "etc/lifeboat/server.yaml")
	if out, err := exec.Command(installed, "config", "check", "server", cfg).CombinedOutput(); err != nil {
		t.Errorf("config check server %s: %v\n%s", cfg, err, out)
	}

	// An admin's configuration is never overwritten.
	edited := readFile(t, cfg) + "listen: 127.0.0.1:19443\n"
	if err := os.WriteFile(cfg, []byte(edited), 0o640); err != nil {
		t.Fatal(err)
	}
	out = makeIn(t, append([]string{"install"}, vars...)...)
	if readFile(t, cfg) != edited || !strings.Contains(out, "kept "+cfg) {
		t.Errorf("a second make install changed %s or did not say it kept it:\n%s", cfg, out)
	}

	out = makeIn(t, append([]string{"uninstall"}, vars...)...)
	if _, err := os.Stat(installed); !os.IsNotExist(err) {
		t.Errorf("make uninstall left %s (%v)", installed, err)
	}
	for unit, role := range units {
		if _, err := os.Stat(filepath.Join(root, "etc/systemd/system", unit)); !os.IsNotExist(err) {
			t.Errorf("make uninstall left %s (%v)", unit, err)
		}
		if _, err := os.Stat(filepath.Join(root, "etc/lifeboat", role+".yaml")); err != nil {
			t.Errorf("make uninstall removed the configuration of %s: %v", role, err)
		}
	}
	if !strings.Contains(out, "kept "+filepath.Join(root, "etc/lifeboat")) {
		t.Errorf("make uninstall does not say it kept the configurations:\n%s", out)
	}
}

// The units pass systemd-analyze verify, installed with real paths (it
// checks that ExecStart's binary exists). It needs no running systemd; the
// check is skipped where the tool is not installed (apt-get install systemd).
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd): units not verified")
	}
	testenv.Tools(t, "make")
	tmp := t.TempDir()
	makeIn(t, "install", "DESTDIR=", "PREFIX="+filepath.Join(tmp, "prefix"), "CONFDIR="+filepath.Join(tmp, "conf"),
		"SYSTEMDDIR="+filepath.Join(tmp, "units"), "BIN="+filepath.Join(tmp, "build", "lifeboat"))
	for unit, role := range units {
		path := filepath.Join(tmp, "units", unit)
		if want := filepath.Join(tmp, "conf", role+".yaml"); !strings.Contains(readFile(t, path), " --config "+want+"\n") {
			t.Errorf("%s does not use CONFDIR: want --config %s", unit, want)
		}
		out, err := exec.Command(analyze, "verify", path).CombinedOutput()
		// Unknown keys are only warnings: any line about the unit fails.
		if err != nil || strings.Contains(string(out), unit) {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
	}
}
