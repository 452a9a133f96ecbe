package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/pipeline/pki"
)

// Acceptance tests of the control plane (issue 15), through the lifeboat
// binary only: a site from nothing, heartbeats and health events, a slow
// link, a removed machine, policy ranges, and the protection commands.

// fast heartbeats so that a change reaches the agent within a second; a
// timeout long enough that a busy machine raises no LB1001 by accident.
var calmHeartbeats = []string{"--heartbeat-interval", "500ms", "--heartbeat-timeout", "30s"}

// From nothing: server init prints a passphrase; a wrong one is refused
// (exit 1, a clear message, LB1009 in events); register, policy create,
// protect --wait shows the initial replication's progress; status --output
// json shows the item protected with an RPO and a latest point; writes
// through NBD reach a later point equal to the source; the managed agent's
// /metrics carries its volume; server passphrase replaces the passphrase.
func TestControlFromNothingToProtected(t *testing.T) {
	need(t, "qemu-io")
	s := newCtlSite(t, calmHeartbeats...)
	if !strings.Contains(s.initOut, "shown only now") {
		t.Errorf("server init does not say the passphrase is shown once:\n%s", s.initOut)
	}

	wrong := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrong, []byte("aaaa-bbbb-cccc-dddd\n"), 0o600)
	r := lifeboat(t, "agent", "register", "--server", s.controlURL(), "--passphrase-file", wrong, "--name", "web01",
		"--identity-dir", filepath.Join(t.TempDir(), "id"))
	if r.code != 1 || !strings.Contains(r.stderr, "wrong registration passphrase") {
		t.Fatalf("register with a wrong passphrase: want exit 1 and 'wrong registration passphrase'; %v", r)
	}
	if e := s.event(control.CodeRegisterRefused, "web01"); e == nil || e.Severity != control.Warning || !strings.Contains(e.Message, "wrong passphrase") {
		t.Fatalf("no LB1009 Warning event for the refused registration: %+v\n%s", e, s.ok("events"))
	}
	if !strings.Contains(s.log(), "wrong registration passphrase") {
		t.Errorf("the server did not log the refused registration:\n%s", s.log())
	}

	metrics := freeAddr(t)
	id := s.register("web01")
	s.ok("policy", "create", "gold", "--rpo-threshold", "5s", "--crash-interval", "1s")
	a := startManaged(t, "web01", id, "--metrics-listen", metrics)
	img := filepath.Join(t.TempDir(), "disk.img")
	out := s.ok("protect", "--machine", "web01", "--volume", "disk="+img+",size=32MiB", "--policy", "gold", "--wait", "--timeout", "2m")
	t.Logf("protect --wait:\n%s", out)
	for _, want := range []string{"protecting web01/disk", "initial replication of web01/disk:", "100%", "latest recovery point #"} {
		if !strings.Contains(out, want) {
			t.Errorf("protect --wait does not show %q:\n%s", want, out)
		}
	}
	p := &ctlProtected{s: s, a: a, img: img}
	it := s.waitItem("web01", "disk", "protected", time.Minute, func(it *control.ItemStatus) bool {
		return it.State == control.StateProtected && it.RPOSeconds != nil && it.LatestPoint != nil
	})
	if it.Health != control.Healthy || it.Policy != "gold" || it.ProcessServer != s.dataURL() {
		t.Errorf("item after protect --wait: %+v, want Healthy, policy gold, process server %s", it, s.dataURL())
	}
	// The JSON itself, not only what it decodes to: scripts read these keys.
	js := s.ok("status", "--output", "json")
	for _, key := range []string{`"state": "protected"`, `"rpo_seconds": `, `"latest_point": {`} {
		if !strings.Contains(js, key) {
			t.Errorf("status --output json has no %s:\n%s", key, js)
		}
	}

	t0 := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 3M", "-c", "flush", a.uri("disk"))
	later := p.settle(t0)
	if later.LatestPoint.Seq <= it.LatestPoint.Seq {
		t.Fatalf("point after the writes: #%d, want after the first #%d", later.LatestPoint.Seq, it.LatestPoint.Seq)
	}

	fams := scrapeMetrics(t, metrics)
	vol := map[string]string{"volume": "disk"}
	if v, _ := sample(fams, "lifeboat_agent_written_bytes_total", vol); v < 3<<20 {
		t.Errorf("managed agent: written %v bytes, want at least the 3 MiB qemu-io wrote", v)
	}
	if v, _ := sample(fams, "lifeboat_agent_shipped_bytes_total", vol); v <= 0 {
		t.Errorf("managed agent: shipped %v bytes, want > 0", v)
	}
	if v, ok := sample(fams, "lifeboat_agent_connected", vol); !ok || v != 1 {
		t.Errorf("managed agent: connected %v (present %v), want 1", v, ok)
	}
	if _, ok := sample(fams, "lifeboat_agent_rpo_seconds", vol); !ok {
		t.Errorf("managed agent: no lifeboat_agent_rpo_seconds for its protected volume")
	}

	// A new passphrase: the old one stops working, web01 keeps its certificate.
	fresh := strings.TrimSpace(s.ok("server", "passphrase"))
	r = lifeboat(t, "agent", "register", "--server", s.controlURL(), "--passphrase-file", s.pass, "--name", "web02",
		"--identity-dir", filepath.Join(t.TempDir(), "id2"))
	if r.code != 1 || !strings.Contains(r.stderr, "wrong registration passphrase") {
		t.Errorf("register with the replaced passphrase: want exit 1; %v", r)
	}
	os.WriteFile(s.pass, []byte(fresh+"\n"), 0o600)
	s.register("web02")
	if st := s.status(); len(st.Machines) != 2 || st.Health != control.Healthy {
		t.Errorf("after web02 registered: %d machines, health %s; want 2, Healthy (web01 still heard from)", len(st.Machines), st.Health)
	}
}

// An agent stopped by kill -9, then by SIGTERM, raises a Critical LB1001
// within the heartbeat timeout and turns the item Critical; started again,
// the item is Healthy and the event cleared. A slow link (each segment held
// 8 s) under a steady writer pushes the RPO over the policy's 5 s: a
// Warning LB1002; the link restored, it clears.
func TestControlNoHeartbeatAndSlowLinkEvents(t *testing.T) {
	need(t, "qemu-io")
	p := newCtlProtected(t, "16MiB", []string{"--heartbeat-interval", "500ms", "--heartbeat-timeout", "3s"})
	s, a := p.s, p.a
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		a.stop(sig)
		e := s.waitEvent(control.CodeNoHeartbeat, "web01", true, time.Minute)
		if e.Severity != control.Critical || !strings.Contains(e.Message, "no heartbeat from web01") {
			t.Errorf("after %v: LB1001 event %+v, want Critical about web01's heartbeat", sig, e)
		}
		s.waitItem("web01", "disk", "Critical", 30*time.Second, func(it *control.ItemStatus) bool { return it.Health == control.Critical })
		if st := s.status(); st.Health != control.Critical {
			t.Errorf("after %v: site health %s, want Critical", sig, st.Health)
		}
		a.start()
		s.waitEvent(control.CodeNoHeartbeat, "web01", false, time.Minute)
		s.waitItem("web01", "disk", "Healthy and protected again", time.Minute, func(it *control.ItemStatus) bool {
			return it.Health == control.Healthy && it.State == control.StateProtected
		})
	}
	if !strings.Contains(s.log(), "event raised") || !strings.Contains(s.log(), "LB1001") {
		t.Errorf("the server did not log LB1001")
	}

	// A steady writer, so that there is always something newer than the
	// last point; the link slowed to 8 s per segment.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "write -P 0x"+[]string{"11", "22", "33"}[i%3]+" 2M 256k", a.uri("disk")).Run()
			time.Sleep(300 * time.Millisecond)
		}
	}()
	defer func() { cancel(); wg.Wait() }()
	if err := os.WriteFile(s.delay, []byte("8s"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := s.waitEvent(control.CodeRPOThreshold, "web01/disk", true, 2*time.Minute)
	if e.Severity != control.Warning || !strings.Contains(e.Message, "threshold of 5s") {
		t.Errorf("LB1002 event %+v, want a Warning naming the 5s threshold", e)
	}
	s.waitItem("web01", "disk", "Warning for its RPO", 30*time.Second, func(it *control.ItemStatus) bool {
		return it.Health == control.Warning && len(it.Reasons) > 0 && strings.Contains(strings.Join(it.Reasons, ";"), "RPO")
	})
	os.WriteFile(s.delay, nil, 0o600)
	s.waitEvent(control.CodeRPOThreshold, "web01/disk", false, 2*time.Minute)
	cancel()
	wg.Wait()
	s.waitItem("web01", "disk", "Healthy once the link recovered", time.Minute, func(it *control.ItemStatus) bool {
		return it.Health == control.Healthy
	})
}

// A removed machine is refused on every port: its agent's heartbeats (the
// control port) and segments (the data port) are refused and it says so,
// its certificate used directly is refused by both ports, each refusal is
// logged by the server, and the machine and its item are gone.
func TestControlRemovedMachineRefusedOnEveryPort(t *testing.T) {
	need(t, "qemu-io")
	p := newCtlProtected(t, "16MiB", calmHeartbeats)
	s, a := p.s, p.a
	out := s.ok("machine", "remove", "web01")
	if !strings.Contains(out, "removed web01") || !strings.Contains(out, "web01/disk") {
		t.Errorf("machine remove: %s", out)
	}
	waitFor(t, 30*time.Second, "the agent to say the configuration server refuses it", func() bool {
		return strings.Contains(a.log(), "the configuration server refuses this machine")
	})
	// Writes are kept on the agent (it protects its last configuration),
	// but the data port refuses them.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", "-c", "flush", a.uri("disk"))
	var local string
	waitFor(t, 30*time.Second, "the agent's status to show its segments refused", func() bool {
		local = lifeboat(t, "status", "--journal-dir", a.journal).stdout
		return strings.Contains(local, "REPLICATION STOPPED") &&
			(strings.Contains(local, "certificate revoked") || strings.Contains(local, "refuses this machine"))
	})
	t.Logf("status --journal-dir on the removed machine:\n%s", local)

	conf, err := pki.ClientTLS(filepath.Join(a.identity, "web01.crt"), filepath.Join(a.identity, "web01.key"), filepath.Join(a.identity, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 30 * time.Second}
	req, _ := http.NewRequest(http.MethodPost, s.controlURL()+"/v1/agent/heartbeat", strings.NewReader(`{"version":"x","volumes":[]}`))
	if code, body := callOrErr(c, req); code != http.StatusUnauthorized && code != 0 {
		t.Errorf("heartbeat with web01's certificate after remove: %d %s, want refused", code, body)
	}
	req, _ = http.NewRequest(http.MethodGet, s.dataURL()+"/v1/volumes", nil)
	if code, body := callOrErr(c, req); code != 0 && code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Errorf("data port with web01's certificate after remove: %d %s, want refused", code, body)
	}
	log := s.log()
	for _, want := range []string{"machine removed", "control request refused", "certificate revoked"} {
		if !strings.Contains(log, want) {
			t.Errorf("server log has no %q", want)
		}
	}
	st := s.status()
	if len(st.Items) != 0 || len(st.Machines) != 0 {
		t.Errorf("status after machine remove: %d items, %d machines; want none", len(st.Items), len(st.Machines))
	}
	if e := s.event(control.CodeMachineRemoved, "web01"); e == nil {
		t.Errorf("no LB1010 event for the removed machine")
	}
}

// callOrErr sends req; a refusal at the TLS handshake is code 0.
func callOrErr(c *http.Client, req *http.Request) (int, string) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// Every policy field's bad values are refused, exit 2, with the allowed
// range or values in the message, and nothing is stored; unknown flags,
// bad values of the other site commands and an update without fields
// exit 2 too.
func TestControlPolicyBadValuesRefused(t *testing.T) {
	s := newCtlSite(t, calmHeartbeats...)
	s.ok("policy", "create", "gold") // the defaults, for the updates below
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rpo-threshold", "4s"}, "allowed range 5s to 24h0m0s"},
		{[]string{"--rpo-threshold", "25h"}, "allowed range 5s to 24h0m0s"},
		{[]string{"--retention", "361h"}, "allowed range 1h0m0s to 360h0m0s"},
		{[]string{"--retention", "30m"}, "allowed range 1h0m0s to 360h0m0s"},
		{[]string{"--crash-interval", "500ms"}, "crash-interval 500ms: allowed range 1s to 1h0m0s"},
		{[]string{"--crash-interval", "1500ms"}, "crash-interval 1.5s: allowed range 1s to 1h0m0s, in whole seconds"},
		{[]string{"--retention", "2h500ms"}, "retention 2h0m0.5s: allowed range 1h0m0s to 360h0m0s, in whole seconds"},
		{[]string{"--crash-interval", "2h"}, "allowed range 1s to 1h0m0s"},
		{[]string{"--compression", "zip"}, `allowed values ["none" "fastest" "default" "better" "best"]`},
		{[]string{"--encryption-key", "vault:k1"}, `allowed values ["" "site"]`},
		{[]string{"--failback-rpo-threshold", "1s"}, "failback rpo-threshold 1s: allowed range 5s to 24h0m0s"},
		{[]string{"--failback-crash-interval", "2h"}, "failback crash-interval 2h0m0s: allowed range 1s to 1h0m0s"},
		{[]string{"--rpo-threshold", "soon"}, "invalid value"},
		{[]string{"--no-such-flag", "1"}, "flag provided but not defined"},
	} {
		t.Run(strings.Join(c.args, "="), func(t *testing.T) {
			r := s.cli(append([]string{"policy", "create", "bad"}, c.args...)...)
			if r.code != 2 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("want exit 2 and %q; %v", c.want, r)
			}
			if len(c.args) == 2 && !strings.HasPrefix(c.args[0], "--no-such") && c.args[1] != "soon" {
				r := s.cli(append([]string{"policy", "update", "gold"}, c.args...)...)
				if r.code != 2 || !strings.Contains(r.stderr, c.want) {
					t.Errorf("update: want exit 2 and %q; %v", c.want, r)
				}
			}
		})
	}
	r := s.cli("policy", "update", "gold")
	if r.code != 2 || !strings.Contains(r.stderr, "nothing to change") {
		t.Errorf("policy update without fields: want exit 2 and 'nothing to change'; %v", r)
	}
	for _, args := range [][]string{
		{"protect", "--machine", "web01", "--volume", "d=/tmp/d.img", "--policy", "gold", "--frobnicate"},
		{"pause", "--machine", "web01", "--volume", "d", "--now"},
		{"machine", "list", "--all"},
		{"events", "--since", "last tuesday"},
		{"status", "--output", "yaml"},
	} {
		if r := s.cli(args...); r.code != 2 || r.stderr == "" {
			t.Errorf("want exit 2 and a message; %v", r)
		}
	}
	r = s.cli("policy", "create", "ok", "--retention", "360h", "--crash-interval", "1s", "--rpo-threshold", "24h")
	if r.code != 0 {
		t.Errorf("the ranges' ends are allowed: %v", r)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(s.ok("policy", "list")), "\n")[1:] {
		names = append(names, strings.Fields(line)[0])
	}
	if strings.Join(names, ",") != "gold,ok" {
		t.Errorf("policies after the refusals: %q, want gold and ok only", names)
	}
	if js := s.ok("policy", "show", "gold", "--output", "json"); !strings.Contains(js, `"retention_seconds": 86400`) {
		t.Errorf("gold changed by a refused update:\n%s", js)
	}
}

// pause, writes, resume: the item goes paused then protected and the
// writes reach a point; resync --full copies the volume in a new
// generation and a new point follows; unprotect removes the agent's NBD
// export and the item from status.
func TestControlPauseResumeResyncUnprotect(t *testing.T) {
	need(t, "qemu-io")
	p := newCtlProtected(t, "16MiB", calmHeartbeats)
	s, a := p.s, p.a
	s.ok("pause", "--machine", "web01", "--volume", "disk")
	waitFor(t, 30*time.Second, "the agent to pause", func() bool { return strings.Contains(a.log(), "replication paused by the site") })
	s.waitItem("web01", "disk", "paused", 30*time.Second, func(it *control.ItemStatus) bool { return it.State == control.StatePaused })
	t0 := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 4M 2M", "-c", "flush", a.uri("disk"))
	if it := s.item("web01", "disk"); it.State != control.StatePaused {
		t.Errorf("after writes while paused: state %q", it.State)
	}
	s.ok("resume", "--machine", "web01", "--volume", "disk")
	s.waitItem("web01", "disk", "protected again", 30*time.Second, func(it *control.ItemStatus) bool { return it.State == control.StateProtected })
	resumed := p.settle(t0)

	t1 := time.Now()
	s.ok("resync", "--full", "--machine", "web01", "--volume", "disk")
	waitFor(t, 30*time.Second, "the agent to resync every region", func() bool {
		return strings.Contains(a.log(), "resync of every region requested by the site")
	})
	after := p.settle(t1)
	if after.LatestPoint.Generation <= resumed.LatestPoint.Generation {
		t.Errorf("point after resync --full: generation %d, want after %d", after.LatestPoint.Generation, resumed.LatestPoint.Generation)
	}

	s.ok("unprotect", "--machine", "web01", "--volume", "disk")
	waitFor(t, 30*time.Second, "the item to leave status", func() bool { return s.item("web01", "disk") == nil })
	waitFor(t, 30*time.Second, "the agent's NBD export to go", func() bool {
		return exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read 0 4k", a.uri("disk")).Run() != nil
	})
	if !strings.Contains(a.log(), "volume no longer protected") {
		t.Errorf("the agent did not log the unprotect")
	}
}
