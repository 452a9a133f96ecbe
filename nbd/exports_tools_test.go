package nbd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strings"
	"testing"

	"lifeboat/nbd"
)

// An export added to a running dynamic server is listed by nbdinfo and
// written and read by qemu-io; removed, it is gone from the list and
// qemu-io says there is no such export.
func TestAddRemoveExportWithTools(t *testing.T) {
	requireTool(t, "nbdinfo", "qemu-io")
	srv, addr := dynamicServer(t, nil)
	v := newVolume(t, 8<<20, nil)
	if err := srv.AddExport(v.export("failover-1")); err != nil {
		t.Fatal(err)
	}
	if got := listedByNbdinfo(t, addr); len(got) != 1 || got[0] != "failover-1" {
		t.Fatalf("nbdinfo --list: %q, want [failover-1]", got)
	}
	out := run(t, "qemu-io", "-f", "raw", uri(addr, "failover-1"),
		"-c", "write -P 0x5a 1M 64k", "-c", "flush", "-c", "read -P 0x5a 1M 64k")
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	if err := srv.RemoveExport(context.Background(), "failover-1"); err != nil {
		t.Fatal(err)
	}
	if got := listedByNbdinfo(t, addr); len(got) != 0 {
		t.Fatalf("nbdinfo --list after RemoveExport: %q", got)
	}
	b, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 512", uri(addr, "failover-1")).CombinedOutput()
	if err == nil || !strings.Contains(string(b), `no export named "failover-1"`) {
		t.Fatalf("qemu-io on the removed export: %v\n%s", err, b)
	}
	v.checkJournal(t)
}

func listedByNbdinfo(t *testing.T, addr string) []string {
	t.Helper()
	var info struct {
		Exports []struct {
			Name string `json:"export-name"`
		} `json:"exports"`
	}
	out := run(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	var names []string
	for _, e := range info.Exports {
		names = append(names, e.Name)
	}
	return names
}

// RemoveExport under a running nbdcopy (several connections, requests in
// flight): it returns once nbdcopy's connections are drained and closed,
// nbdcopy fails, and the backend is not called afterwards.
func TestRemoveExportUnderNbdcopy(t *testing.T) {
	requireTool(t, "nbdcopy")
	log := &logBuffer{}
	srv, addr := dynamicServer(t, log)
	w := &watched{Backend: sizeOnly(64 << 30)} // far more than the test reads
	if err := srv.AddExport(nbd.Export{Name: "big", Backend: w}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nbdcopy", "--connections=4", "--requests=16", uri(addr, "big"), "null:")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "nbdcopy to read", func() bool { return w.calls.Load() > 1000 })
	if err := srv.RemoveExport(context.Background(), "big"); err != nil {
		t.Fatal(err)
	}
	w.removed(t)
	if err := cmd.Wait(); err == nil {
		t.Fatal("nbdcopy succeeded although its export was removed")
	}
	t.Logf("nbdcopy after %d reads: %s", w.calls.Load(), strings.TrimSpace(stderr.String()))
	if !strings.Contains(log.String(), "export=big connections_drained=") {
		t.Errorf("no log line for the removal:\n%s", log.String())
	}
}

// The empty name "" must not silently switch to another volume when the
// exports change.
func TestDefaultExportWhenExportsChange(t *testing.T) {
	a, b := newMem(1<<20), newMem(2<<20)

	t.Run("dynamic without DefaultExport", func(t *testing.T) {
		srv, addr := dynamicServer(t, nil)
		if err := srv.AddExport(nbd.Export{Name: "a", Backend: a}); err != nil {
			t.Fatal(err)
		}
		if msg := goFails(t, addr, ""); !strings.Contains(msg, "no default export") {
			t.Fatalf("GO \"\" with one export and no DefaultExport: %q", msg)
		}
	})

	t.Run("dynamic with DefaultExport", func(t *testing.T) {
		srv := nbd.NewServer()
		srv.Dynamic, srv.DefaultExport = true, "d"
		addr := serve(t, srv)
		goFails(t, addr, "") // not added yet
		if err := srv.AddExport(nbd.Export{Name: "d", Backend: b}); err != nil {
			t.Fatal(err)
		}
		if size := openClose(t, addr, ""); size != 2<<20 {
			t.Fatalf("default export size %d, want d's", size)
		}
		if err := srv.RemoveExport(context.Background(), "d"); err != nil {
			t.Fatal(err)
		}
		if err := srv.AddExport(nbd.Export{Name: "other", Backend: a}); err != nil {
			t.Fatal(err)
		}
		goFails(t, addr, "")
		if err := srv.AddExport(nbd.Export{Name: "d", Backend: a}); err != nil {
			t.Fatal(err)
		}
		if size := openClose(t, addr, ""); size != 1<<20 {
			t.Fatalf("default export size %d, want the new d's", size)
		}
	})

	t.Run("static only export", func(t *testing.T) {
		srv := nbd.NewServer()
		srv.Exports = []nbd.Export{{Name: "a", Backend: a}}
		addr := serve(t, srv)
		if err := srv.AddExport(nbd.Export{Name: "b", Backend: b}); err != nil {
			t.Fatal(err)
		}
		if size := openClose(t, addr, ""); size != 1<<20 {
			t.Fatalf("\"\" after AddExport selects %d bytes, want the configured export a", size)
		}
		if err := srv.RemoveExport(context.Background(), "a"); err != nil {
			t.Fatal(err)
		}
		goFails(t, addr, "") // never b
	})
}

func TestDynamicConfig(t *testing.T) {
	// Without Dynamic, no exports is still a configuration error.
	srv := nbd.NewServer()
	if err := srv.Serve(context.Background(), mustListen(t)); err != nbd.ErrNoExports {
		t.Fatalf("Serve with no exports = %v, want ErrNoExports", err)
	}
	// Exports added before Serve are served.
	srv = nbd.NewServer()
	srv.Logger = quiet
	if err := srv.AddExport(nbd.Export{Name: "early", Backend: newMem(4096)}); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	openClose(t, addr, "early")
	// A bad configuration is reported by AddExport too.
	srv = nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "x"}}
	if err := srv.AddExport(nbd.Export{Name: "y", Backend: newMem(4096)}); err == nil || !strings.Contains(err.Error(), "no backend") {
		t.Fatalf("AddExport on a server with a bad export: %v", err)
	}
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// openClose opens name with NBD_OPT_GO, closes the connection and returns
// the size.
func openClose(t *testing.T, addr, name string) uint64 {
	t.Helper()
	c := dial(t, addr)
	size, _ := c.goExport(name)
	c.nc.Close()
	return size
}
