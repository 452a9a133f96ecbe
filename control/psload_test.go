package control_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"lifeboat/control"
)

// A new item goes to the process server whose items received the fewest
// bytes per second, not the one with the fewest items; a process server
// that stops sending heartbeats loses its items to the others.
func TestAssignByChurnAndReassign(t *testing.T) {
	s := newSite(t)
	var siteBytes atomic.Int64
	s.srv.SiteVolumes = func() ([]control.PSVolume, int64, int64) {
		return []control.PSVolume{{Machine: "web01", Volume: "busy", ReceivedBytes: siteBytes.Load()}}, 0, 1 << 30
	}
	allowPS(t, s, "ps2")
	issued, err := control.Register(context.Background(), s.url, control.Registration{Name: "ps2", Role: control.RegisterProcessServer,
		Hosts: []string{"127.0.0.1"}, URL: "https://127.0.0.1:9543"}, s.pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(issued.ServerCertPEM) == 0 {
		t.Fatal("no server certificate for the process server")
	}
	dir := t.TempDir()
	if err := issued.Identity().Write(dir, "ps2"); err != nil {
		t.Fatal(err)
	}
	ps2 := clientFor(t, filepath.Join(dir, "ps2.crt"), filepath.Join(dir, "ps2.key"), filepath.Join(dir, "ca.crt"))
	// Its client certificate is for heartbeats only: not an agent's.
	if err := control.Call(context.Background(), ps2, "POST", s.url+"/v1/agent/heartbeat", control.Heartbeat{}, nil); status(err) != http.StatusForbidden {
		t.Fatalf("process server as an agent: %v, want 403", err)
	}
	beat := func() {
		if err := control.Call(context.Background(), ps2, "POST", s.url+"/v1/process-server/heartbeat",
			control.PSHeartbeat{URL: "https://127.0.0.1:9543"}, new(control.PSConfig)); err != nil {
			t.Fatal(err)
		}
	}
	s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name = "gold"
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	protect := func(vol, ps string) control.Item {
		var it control.Item
		req := control.ProtectRequest{Machine: "web01", Volume: vol, Path: "/dev/" + vol, Policy: "gold", ProcessServer: ps}
		if err := s.call("POST", "/v1/items", req, &it); err != nil {
			t.Fatal(err)
		}
		return it
	}
	protect("busy", s.srv.DataURL)
	protect("idle1", "https://127.0.0.1:9543")
	protect("idle2", "https://127.0.0.1:9543")
	// The site's item receives 10 MB/s; ps2's two receive nothing.
	control.BeatSiteForTest(s.srv)
	beat()
	s.clock.Add(time.Second)
	siteBytes.Add(10 << 20)
	control.BeatSiteForTest(s.srv)
	beat()
	if it := protect("new", ""); it.ProcessServer != "https://127.0.0.1:9543" {
		t.Fatalf("new item on %s, want ps2 (no churn, although more items)", it.ProcessServer)
	}
	// ps2 falls silent: its three items move to the site.
	s.clock.Add(31 * time.Second)
	control.BeatSiteForTest(s.srv)
	if err := control.ReassignForTest(s.srv); err != nil {
		t.Fatal(err)
	}
	var st control.SiteStatus
	if err := s.call("GET", "/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	for _, it := range st.Items {
		if it.ProcessServer != s.srv.DataURL {
			t.Errorf("%s/%s still on %s", it.Machine, it.Volume, it.ProcessServer)
		}
	}
	if st.Health != control.Critical {
		t.Errorf("site health %s with a process server down, want Critical", st.Health)
	}
}

// --process-server takes a registered name or "site" as well as a URL.
func TestProtectOnNamedProcessServer(t *testing.T) {
	s := newSite(t)
	allowPS(t, s, "ps2")
	if _, err := control.Register(context.Background(), s.url, control.Registration{Name: "ps2", Role: control.RegisterProcessServer,
		Hosts: []string{"127.0.0.1"}, URL: "https://127.0.0.1:9543"}, s.pass, nil); err != nil {
		t.Fatal(err)
	}
	s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name = "gold"
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	for ps, want := range map[string]string{"ps2": "https://127.0.0.1:9543", "site": s.srv.DataURL} {
		var it control.Item
		req := control.ProtectRequest{Machine: "web01", Volume: "v" + ps, Path: "/dev/" + ps, Policy: "gold", ProcessServer: ps}
		if err := s.call("POST", "/v1/items", req, &it); err != nil || it.ProcessServer != want {
			t.Fatalf("--process-server %s: %+v %v, want %s", ps, it, err, want)
		}
	}
	req := control.ProtectRequest{Machine: "web01", Volume: "x", Path: "/dev/x", Policy: "gold", ProcessServer: "ps9"}
	if err := s.call("POST", "/v1/items", req, nil); status(err) != http.StatusNotFound {
		t.Fatalf("unknown process server: %v, want 404", err)
	}
}

// allowPS is an admin's 'process-server allow NAME --host 127.0.0.1
// --advertise https://127.0.0.1:9543'.
func allowPS(t *testing.T, s *site, name string) {
	t.Helper()
	req := control.AllowRequest{Name: name, Hosts: []string{"127.0.0.1"}, URL: "https://127.0.0.1:9543"}
	if err := s.call("POST", "/v1/process-servers", req, nil); err != nil {
		t.Fatal(err)
	}
}

// The passphrase every machine gets does not make a process server: its
// certificate is trusted by every agent, so an admin allows its name,
// hosts and URL first, and it registers with exactly those. A removed one
// loses its items and its heartbeats are refused.
func TestProcessServerNeedsAnAdminsAllowance(t *testing.T) {
	s := newSite(t)
	reg := control.Registration{Name: "evil", Role: control.RegisterProcessServer, Hosts: []string{"127.0.0.1", "localhost"}, URL: "https://127.0.0.1:9543"}
	if _, err := control.Register(context.Background(), s.url, reg, s.pass, nil); status(err) != http.StatusForbidden {
		t.Fatalf("process server registration without an allowance: %v, want 403", err)
	}
	allowPS(t, s, "ps2")
	reg.Name = "ps2" // other hosts than allowed
	if _, err := control.Register(context.Background(), s.url, reg, s.pass, nil); status(err) != http.StatusForbidden || !strings.Contains(err.Error(), "allowed with hosts") {
		t.Fatalf("registration with other hosts: %v, want 403 naming the allowed ones", err)
	}
	// An agent may not take the allowed name, nor the admin's.
	for _, name := range []string{"ps2", "admin"} {
		if _, err := control.Register(context.Background(), s.url, control.Registration{Name: name}, s.pass, nil); status(err) != http.StatusConflict {
			t.Fatalf("agent registering as %s: %v, want 409", name, err)
		}
	}
	reg.Hosts = []string{"127.0.0.1"}
	issued, err := control.Register(context.Background(), s.url, reg, s.pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := issued.Identity().Write(dir, "ps2"); err != nil {
		t.Fatal(err)
	}
	ps2 := clientFor(t, filepath.Join(dir, "ps2.crt"), filepath.Join(dir, "ps2.key"), filepath.Join(dir, "ca.crt"))
	beat := func() error {
		return control.Call(context.Background(), ps2, "POST", s.url+"/v1/process-server/heartbeat", control.PSHeartbeat{URL: "https://127.0.0.1:9543"}, nil)
	}
	if err := beat(); err != nil {
		t.Fatal(err)
	}
	s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name = "gold"
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	req := control.ProtectRequest{Machine: "web01", Volume: "db", Path: "/dev/sdb", Policy: "gold", ProcessServer: "ps2"}
	if err := s.call("POST", "/v1/items", req, nil); err != nil {
		t.Fatal(err)
	}
	var out control.RemovedProcessServer
	if err := s.call("DELETE", "/v1/process-servers/ps2", nil, &out); err != nil || len(out.Revoked) != 1 {
		t.Fatalf("remove ps2: %+v %v, want its client certificate revoked", out, err)
	}
	var st control.SiteStatus
	if err := s.call("GET", "/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Items[0].ProcessServer != s.srv.DataURL {
		t.Fatalf("item on %s after its process server was removed, want the site's", st.Items[0].ProcessServer)
	}
	ps2.CloseIdleConnections()
	if err := beat(); err == nil {
		t.Fatal("a removed process server's heartbeat was taken")
	}
}
