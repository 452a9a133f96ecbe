package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/pipeline"
)

// Scale-out process servers under the configuration server: a site and a
// registered process server on one shared file target, a managed agent
// with four volumes. The items spread over both; kill -9 of the process
// server raises LB1012 and moves its items to the site's, every recovery
// point it made is still there, and new writes reach new points that hold
// them.
func TestProcessServersSpreadAndFailOver(t *testing.T) {
	need(t, "qemu-io")
	root := t.TempDir()
	siteDir, psDir, shared := filepath.Join(root, "site"), filepath.Join(root, "ps2"), "file://"+filepath.Join(root, "replicas")
	pass := filepath.Join(root, "pass")
	init := run(t, binary, "server", "init", "--data-dir", siteDir)
	m := regexp.MustCompile(`(?m)^\s+([a-z2-7]{4}(?:-[a-z2-7]{4}){7})$`).FindStringSubmatch(init)
	if m == nil {
		t.Fatalf("server init printed no passphrase:\n%s", init)
	}
	if err := os.WriteFile(pass, []byte(m[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data1, data2, ctl := freeAddr(t), freeAddr(t), freeAddr(t)
	ctlURL := "https://" + ctl
	startSrv := func(args ...string) *agentProc {
		p, err := startProc(t, nil, func(_ *agentProc, line string) bool {
			return strings.HasPrefix(line, "process server listening on")
		}, args...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	site := startSrv("server", "--data-dir", siteDir, "--listen", data1, "--target", shared, "--recovery-nbd", "",
		"--control-listen", ctl, "--advertise", "https://"+data1, "--heartbeat-interval", "500ms", "--heartbeat-timeout", "3s")
	defer func() {
		if t.Failed() {
			t.Logf("site:\n%s", site.Output())
		}
	}()
	admin := func(args ...string) cliResult {
		return lifeboat(t, append(args, "--server", ctlURL, "--data-dir", siteDir)...)
	}
	must := func(r cliResult) string {
		t.Helper()
		if r.code != 0 {
			t.Fatal(r)
		}
		return r.stdout
	}
	// The passphrase alone does not make a process server: an admin
	// allows it first.
	if r := lifeboat(t, "process-server", "register", "--server", ctlURL, "--passphrase-file", pass, "--name", "ps2",
		"--data-dir", psDir, "--host", "127.0.0.1", "--advertise", "https://"+data2); r.code != 1 || !strings.Contains(r.out(), "process-server allow ps2") {
		t.Fatalf("register without an allowance: %v", r)
	}
	os.RemoveAll(psDir)
	must(admin("process-server", "allow", "ps2", "--host", "127.0.0.1", "--advertise", "https://"+data2))
	must(lifeboat(t, "process-server", "register", "--server", ctlURL, "--passphrase-file", pass, "--name", "ps2",
		"--data-dir", psDir, "--host", "127.0.0.1", "--advertise", "https://"+data2))
	// The same name again is refused, and the agent may not take it.
	if r := lifeboat(t, "process-server", "register", "--server", ctlURL, "--passphrase-file", pass, "--name", "ps2",
		"--data-dir", filepath.Join(root, "ps2b"), "--host", "127.0.0.1", "--advertise", "https://"+data2); r.code != 1 || !strings.Contains(r.out(), "ps2") {
		t.Fatalf("second ps2: %v", r)
	}
	ps2 := startSrv("process-server", "--data-dir", psDir, "--listen", data2, "--target", shared)
	defer func() {
		if t.Failed() {
			t.Logf("ps2:\n%s", ps2.Output())
		}
	}()
	ident := filepath.Join(root, "ident")
	must(lifeboat(t, "agent", "register", "--server", ctlURL, "--passphrase-file", pass, "--name", "web01", "--identity-dir", ident))
	var nbdAddr string
	agent, err := startProc(t, nil, func(_ *agentProc, line string) bool {
		if a, ok := strings.CutPrefix(line, "serving NBD at "); ok {
			nbdAddr = strings.Fields(a)[0]
		}
		return strings.HasPrefix(line, "lifeboat agent web01 managed by")
	}, "agent", "--identity-dir", ident, "--journal-dir", filepath.Join(root, "journal"), "--nbd", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("agent:\n%s", agent.Output())
		}
	}()
	must(admin("policy", "create", "gold", "--crash-interval", "1s"))
	vols := []string{"a", "b", "c", "d"}
	for _, v := range vols {
		must(admin("protect", "--machine", "web01", "--volume", v+"="+filepath.Join(root, v+".img")+",size=16MiB", "--policy", "gold"))
	}
	status := func() control.SiteStatus {
		var st control.SiteStatus
		if err := json.Unmarshal([]byte(must(admin("status", "--output", "json"))), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	waitFor := func(what string, ok func(control.SiteStatus) bool) control.SiteStatus {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			st := status()
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				b, _ := json.MarshalIndent(st, "", "  ")
				t.Fatalf("no %s in 2m:\n%s", what, b)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	st := waitFor("point on every item", func(st control.SiteStatus) bool {
		return !slices.ContainsFunc(st.Items, func(it control.ItemStatus) bool { return it.LatestPoint == nil })
	})
	on2 := map[string]bool{}
	for _, it := range st.Items {
		if it.ProcessServer == "https://"+data2 {
			on2[it.Volume] = true
		}
	}
	if len(on2) != 2 {
		t.Fatalf("items on ps2: %v; want two of the four (spread by load)", on2)
	}
	// Writes to ps2's items, and the points ps2 makes of them.
	t0 := time.Now()
	for v := range on2 {
		run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "flush", "nbd://"+nbdAddr+"/"+v)
	}
	pointsOn := func(server, v string) []pipeline.Point {
		var ps []pipeline.Point
		out := must(lifeboat(t, "points", "list", "--server", server, "--data-dir", siteDir, "--volume", "web01/"+v, "--output", "json"))
		if err := json.Unmarshal([]byte(out), &ps); err != nil {
			t.Fatal(err)
		}
		return ps
	}
	before := map[string][]pipeline.Point{}
	for v := range on2 {
		deadline := time.Now().Add(time.Minute)
		for {
			before[v] = pointsOn("https://"+data2, v)
			if p := before[v]; len(p) > 0 && p[len(p)-1].Time.After(t0) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ps2 made no point of %s after the writes: %v", v, before[v])
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	ps2.stop(t, syscall.SIGKILL)
	st = waitFor("items moved off ps2", func(st control.SiteStatus) bool {
		return !slices.ContainsFunc(st.Items, func(it control.ItemStatus) bool { return it.ProcessServer != "https://"+data1 })
	})
	var events []control.Event
	if err := json.Unmarshal([]byte(must(admin("events", "--output", "json"))), &events); err != nil {
		t.Fatal(err)
	}
	down, moved := false, 0
	for _, e := range events {
		down = down || e.Code == control.CodePSDown && e.Subject == "ps2" && e.Cleared == nil
		if e.Code == control.CodeItemMoved {
			moved++
		}
	}
	if !down || moved != 2 {
		t.Fatalf("events: ps2 down open %v, %d items moved (want 2):\n%+v", down, moved, events)
	}
	if i := slices.IndexFunc(st.ProcessServers, func(p control.ProcessServerView) bool { return p.Name == "ps2" }); i < 0 || st.ProcessServers[i].Health != control.Critical {
		t.Fatalf("ps2 in status: %+v", st.ProcessServers)
	}
	// New writes reach the site's process server, and every point ps2
	// made is still there.
	t1 := time.Now()
	for v := range on2 {
		run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x6b 1M 1M", "-c", "flush", "nbd://"+nbdAddr+"/"+v)
	}
	for v := range on2 {
		deadline := time.Now().Add(time.Minute)
		var after []pipeline.Point
		for {
			after = pointsOn("https://"+data1, v)
			if len(after) > 0 && after[len(after)-1].Time.After(t1) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the site made no point of %s after the move: %v", v, after)
			}
			time.Sleep(300 * time.Millisecond)
		}
		for _, p := range before[v] {
			if !slices.ContainsFunc(after, func(q pipeline.Point) bool { return q.Seq == p.Seq && q.Generation == p.Generation }) {
				t.Errorf("%s: point %d of ps2 lost after the move: %v", v, p.Seq, after)
			}
		}
		// A point holds both writes: the agent's volume equals the newest
		// one once the tag after the last write is in.
		img, want := filepath.Join(root, v+".point"), sha256File(t, filepath.Join(root, v+".img"))
		deadline = time.Now().Add(time.Minute)
		for {
			os.Remove(img)
			run(t, binary, "points", "export", "--server", "https://"+data1, "--data-dir", siteDir, "--volume", "web01/"+v,
				"--point", "latest", "--out", img)
			got := sha256File(t, img)
			if got == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: latest point %s, volume %s", v, got, want)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
