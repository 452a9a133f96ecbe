package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// certsOf returns the directory with machine name's agent certificate,
// issuing it on first use.
func (s *site) certsOf(name string) string {
	s.t.Helper()
	dir := filepath.Join(filepath.Dir(s.certs), "certs-"+name)
	if _, err := os.Stat(filepath.Join(dir, name+".crt")); err != nil {
		run(s.t, binary, "certs", "issue", "--data-dir", s.dir, "--name", name, "--out", dir)
	}
	return dir
}

// agentArgsAs are the flags that point an agent at this site as machine
// name.
func (s *site) agentArgsAs(name string) []string {
	d := s.certsOf(name)
	return []string{"--server", s.url(), "--cert", filepath.Join(d, name+".crt"),
		"--key", filepath.Join(d, name+".key"), "--ca", filepath.Join(d, "ca.crt")}
}

// clientAs is an HTTPS client with machine name's agent certificate.
func (s *site) clientAs(name string) *http.Client {
	s.t.Helper()
	d := s.certsOf(name)
	conf, err := pki.ClientTLS(filepath.Join(d, name+".crt"), filepath.Join(d, name+".key"), filepath.Join(d, "ca.crt"))
	if err != nil {
		s.t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 30 * time.Second}
}

// call sends a request and returns the status code and body.
func call(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// forge posts the headers of a segment that would end a volume's
// replication if it were taken (a newer generation, first seq 2^40).
func forge(t *testing.T, s *site, c *http.Client, id string, size int64) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.url()+"/v1/volumes/"+id+"/segments", strings.NewReader(strings.Repeat("\x00", 8192)))
	for k, v := range map[string]string{"Volume-Name": "disk", "Volume-Size": fmt.Sprint(size), "Block-Size": "4096",
		"Generation": "9", "First-Seq": fmt.Sprint(uint64(1) << 40), "Last-Seq": fmt.Sprint(uint64(1)<<40 + 10),
		"Segment-Size": "8192", "Segment-Sum": "0123456789abcdef"} {
		req.Header.Set("X-Lifeboat-"+k, v)
	}
	return call(t, c, req)
}

// copyJournal copies an agent's image and journal directory, as a cloned
// VM or a stolen disk image has them.
func copyJournal(t *testing.T, p *protected) (img, jroot string) {
	t.Helper()
	dir := t.TempDir()
	img, jroot = filepath.Join(dir, "disk.img"), filepath.Join(dir, "journal")
	for _, cp := range [][2]string{{p.img, img}, {p.jroot, jroot}} {
		if out, err := exec.Command("cp", "-a", "--sparse=always", cp[0], cp[1]).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v\n%s", err, out)
		}
	}
	return img, jroot
}

// An agent with web02's certificate and a copy of web01's journal
// directory is refused: 403, a clear line in its log and in 'lifeboat
// status', its journal kept; a forged segment (a newer generation, first
// seq 2^40) is refused; web01's replica and every point keep their
// sha256, and web01 replicates normally afterwards. Then an admin moves
// the volume to web01b (web01 renamed): web01 is refused, web01b goes on.
func TestAgentWithAnotherMachinesJournalIsRefused(t *testing.T) {
	need(t, "qemu-io")
	s := newSite(t)
	p := protect(t, s, 64<<20, 8<<20)
	t0 := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 3M", p.uri)
	seq, sum := p.checkLatest(t0)
	before := s.points("disk")
	sums := map[uint64]string{}
	for _, pt := range before {
		sums[pt.Seq] = s.export("web01/disk", fmt.Sprint(pt.Seq))
	}
	st, _ := s.volume("disk")
	id := st.Info.ID
	if st.Info.Machine != "web01" {
		t.Fatalf("volume %s belongs to %q, want web01", id, st.Info.Machine)
	}
	p.a.stop(t, syscall.SIGTERM)

	img, jroot := copyJournal(t, p)
	acked := shipperStatus(t, p.jroot, "disk").Tracker.AckedSeq
	b := startAgent(t, append([]string{"--volume", "disk=" + img, "--journal-dir", jroot, "--segment-age", "200ms",
		"--tag-interval", "1s", "--max-backoff", "2s"}, s.agentArgsAs("web02")...)...)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xa5 0 8M", b.uri["disk"])
	waitFor(t, 30*time.Second, "web02's agent to say the site refuses its volume", func() bool {
		return strings.Contains(shipperStatus(t, jroot, "disk").Stopped, "belongs to machine web01")
	})
	time.Sleep(2 * time.Second) // a few tags and segments later
	stat := run(t, binary, "status", "--journal-dir", jroot)
	if !strings.Contains(stat, "REPLICATION STOPPED") || !strings.Contains(stat, "web02") {
		t.Fatalf("lifeboat status on web02:\n%s", stat)
	}
	t.Logf("web02's status:\n%s", stat)
	if !strings.Contains(b.Output(), "replication of this volume stopped") {
		t.Fatalf("web02's agent did not log the refusal:\n%s", b.Output())
	}
	if !strings.Contains(s.log(), "peer=web02") {
		t.Fatalf("the server did not log the refusal of web02:\n%s", s.log())
	}
	if n, got := len(journalSegments(t, filepath.Join(jroot, "disk"))), shipperStatus(t, jroot, "disk").Tracker.AckedSeq; n == 0 || got != acked {
		t.Fatalf("web02's journal: %d segments, acked seq %d (was %d): want its journal kept", n, got, acked)
	}
	if code, body := forge(t, s, s.clientAs("web02"), id, 64<<20); code != http.StatusForbidden || !strings.Contains(body, "web01") {
		t.Fatalf("forged segment with web02's certificate: HTTP %d %s", code, body)
	}
	if code, body := forge(t, s, s.admin(), id, 64<<20); code != http.StatusForbidden {
		t.Fatalf("segment with the admin certificate: HTTP %d %s", code, body)
	}
	b.stop(t, syscall.SIGTERM)
	if got := s.points("web01/disk"); len(got) != len(before) || got[len(got)-1].Seq != seq {
		t.Fatalf("web01's points changed: %v, were %v", got, before)
	}
	for pseq, want := range sums {
		if got := s.export("web01/disk", fmt.Sprint(pseq)); got != want {
			t.Fatalf("point %d of web01 has sha256 %s, had %s", pseq, got, want)
		}
	}
	if sums[seq] != sum {
		t.Fatalf("latest point %d: %s, source %s", seq, sums[seq], sum)
	}

	// web01 goes on.
	p.a = startAgent(t, append(p.args, s.agentArgs()...)...)
	p.uri = p.a.uri["disk"]
	t1 := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 9M 2M", p.uri)
	p.checkLatest(t1)

	// web01 is renamed web01b: an admin moves the volume.
	out := run(t, binary, "volume", "reassign", "web01/disk", "--to", "web01b", "--server", s.url(), "--data-dir", s.dir)
	if !strings.Contains(out, "belongs to machine web01b") {
		t.Fatalf("volume reassign:\n%s", out)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3d 12M 1M", p.uri)
	waitFor(t, 30*time.Second, "web01's agent to be refused after the reassignment", func() bool {
		return strings.Contains(shipperStatus(t, p.jroot, "disk").Stopped, "belongs to machine web01b")
	})
	p.a.stop(t, syscall.SIGTERM)
	p.a = startAgent(t, append(p.args, s.agentArgsAs("web01b")...)...)
	p.uri = p.a.uri["disk"]
	t2 := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3e 14M 1M", p.uri)
	p.checkLatest(t2)
	if st, _ := s.volume("disk"); st.Info.Machine != "web01b" || st.Info.ID != id {
		t.Fatalf("after the reassignment: %+v", st.Info)
	}
}

// Two machines each with a volume called db: an agent certificate lists
// only its own volumes, the admin all; 'points export --volume db' is
// refused with web01/db and web02/db listed, '--volume web01/db' exports
// web01's.
func TestTwoMachinesWithAVolumeOfTheSameName(t *testing.T) {
	s := newSite(t)
	imgs := map[string]string{}
	for _, m := range []string{"web01", "web02"} {
		dir := t.TempDir()
		imgs[m] = filepath.Join(dir, "db.img")
		makeImage(t, imgs[m], 48<<20, 4<<20)
		startAgent(t, append([]string{"--volume", "db=" + imgs[m], "--journal-dir", filepath.Join(dir, "journal"),
			"--segment-age", "200ms", "--tag-interval", "1s"}, s.agentArgsAs(m)...)...)
	}
	for _, m := range []string{"web01", "web02"} {
		s.waitPoint(url.PathEscape(m+"/db"), time.Time{}, time.Minute)
	}
	list := func(c *http.Client) (names []string) {
		req, _ := http.NewRequest(http.MethodGet, s.url()+"/v1/volumes", nil)
		code, body := call(t, c, req)
		var vols []pipeline.VolumeStatus
		if code != http.StatusOK || json.Unmarshal([]byte(body), &vols) != nil {
			t.Fatalf("GET /v1/volumes: HTTP %d %s", code, body)
		}
		for _, v := range vols {
			names = append(names, v.Info.Machine+"/"+v.Info.Name)
		}
		return names
	}
	if got := fmt.Sprint(list(s.clientAs("web01"))); got != "[web01/db]" {
		t.Fatalf("web01's certificate lists %s", got)
	}
	if got := fmt.Sprint(list(s.admin())); got != "[web01/db web02/db]" {
		t.Fatalf("the admin certificate lists %s", got)
	}
	out, err := exec.Command(binary, "points", "export", "--server", s.url(), "--data-dir", s.dir, "--volume", "db",
		"--out", filepath.Join(t.TempDir(), "db.img")).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "web01/db") || !strings.Contains(string(out), "web02/db") {
		t.Fatalf("points export --volume db: exit %d\n%s", code, out)
	}
	t.Logf("points export --volume db: %s", out)
	if got, want := s.export("web01/db", "latest"), sha256File(t, imgs["web01"]); got != want {
		t.Fatalf("web01/db exports %s, web01's disk is %s", got, want)
	}
	var vols []pipeline.VolumeStatus
	js := run(t, binary, "volume", "list", "--server", s.url(), "--data-dir", s.dir, "--output", "json")
	if err := json.Unmarshal([]byte(js), &vols); err != nil || len(vols) != 2 || vols[1].Info.Machine != "web02" {
		t.Fatalf("volume list --output json: %v\n%s", err, js)
	}
	t.Logf("volume list:\n%s", run(t, binary, "volume", "list", "--server", s.url(), "--data-dir", s.dir))
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
