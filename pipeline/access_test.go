package pipeline_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets/file"
	"lifeboat/targets/memory"
)

// cloneAgentVol copies a (closed) agent volume's backing file and journal
// directory, as a cloned VM or a stolen disk image would have them, and
// opens the copy with client.
func cloneAgentVol(t *testing.T, s *site, a *agentVol, client *http.Client) *agentVol {
	t.Helper()
	dir := t.TempDir()
	b := &agentVol{t: t, path: filepath.Join(dir, "disk.img"), journal: filepath.Join(dir, "journal")}
	for _, cp := range [][2]string{{a.path, b.path}, {a.journal, b.journal}} {
		if out, err := exec.Command("cp", "-a", cp[0], cp[1]).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	b.open(s, 0, client)
	t.Cleanup(b.close)
	return b
}

// waitStopped waits until the shipper says the site refuses its volume.
func waitStopped(t *testing.T, a *agentVol, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := a.ship.Status()
		if st.Stopped != "" {
			for _, w := range want {
				if !strings.Contains(st.Stopped, w) {
					t.Fatalf("status says %q, want it to mention %q", st.Stopped, w)
				}
			}
			return st.Stopped
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shipper did not stop: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func postJSON(t *testing.T, c *http.Client, u string, in any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(in)
	resp, err := c.Post(u, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// forgedSegment posts headers of a segment that would end another
// machine's replication (a newer generation, a far seq) and a junk body.
func forgedSegment(t *testing.T, c *http.Client, url, id string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/volumes/"+id+"/segments", strings.NewReader(strings.Repeat("x", 4096)))
	for k, v := range map[string]string{"Volume-Name": "vol", "Volume-Size": "4194304", "Block-Size": "4096",
		"Generation": "9", "First-Seq": fmt.Sprint(uint64(1) << 40), "Last-Seq": fmt.Sprint(uint64(1) << 40),
		"Segment-Size": "4096", "Segment-Sum": "0000000000000000"} {
		req.Header.Set("X-Lifeboat-"+k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// A machine holding a copy of another machine's journal (same volume id)
// is refused: 403 naming both machines, its shipper stops and keeps its
// journal, the owner's replica and points do not change, a forged segment
// is refused, and the owner replicates normally afterwards. An admin's
// reassignment moves the volume, and only then.
func TestVolumeOfAnotherMachineIsRefused(t *testing.T) {
	s := newSite(t, file.New(t.TempDir()))
	rng := rand.New(rand.NewPCG(11, 12))
	web01 := s.client("web01", pki.RoleAgent)
	a := newAgentVol(t, s, 4<<20, 0, web01)
	a.waitSynced()
	a.writeRandom(rng, 20)
	want := map[uint64]string{}
	seq, sum := a.tag("before")
	want[seq] = sum
	s.checkPoints(a, want)
	id := a.vol.VolumeID()
	a.close()

	b := cloneAgentVol(t, s, a, s.client("web02", pki.RoleAgent))
	b.writeRandom(rng, 20)
	b.tag("web02's")
	msg := waitStopped(t, b, "web01", "web02", "reassign", "--journal-dir")
	t.Logf("web02's shipper: %s", msg)
	if segs := b.vol.Segments(); len(segs) == 0 || b.vol.Status().AckedSeq != seq {
		t.Fatalf("web02's journal: %d segments, acked seq %d; want its segments kept, acked %d", len(segs), b.vol.Status().AckedSeq, seq)
	}
	if code, body := forgedSegment(t, s.client("web02", pki.RoleAgent), s.url, id); code != http.StatusForbidden || !strings.Contains(body, "web01") {
		t.Fatalf("forged segment from web02: %d %s", code, body)
	}
	if code, body := forgedSegment(t, s.client("admin", pki.RoleAdmin), s.url, id); code != http.StatusForbidden {
		t.Fatalf("segment from an admin certificate: %d %s", code, body)
	}
	if code, _ := get(t, s.client("web02", pki.RoleAgent), s.url+"/v1/volumes/"+id); code != http.StatusForbidden {
		t.Fatalf("web02 asking for web01's volume: %d, want 403", code)
	}
	if st := s.status(id); st.AppliedSeq != seq || st.SpooledSeq != seq || st.Info.Machine != "web01" {
		t.Fatalf("web01's volume after web02's attempts: %+v; want seq %d of web01", st, seq)
	}
	s.checkPoints(a, want)
	b.close()

	// The owner goes on.
	a.open(s, 0, web01)
	a.writeRandom(rng, 10)
	seq, sum = a.tag("after")
	want[seq] = sum
	s.checkPoints(a, want)

	// Reassigned (web01 was renamed web01b), the volume refuses web01 and
	// takes web01b.
	admin := s.client("admin", pki.RoleAdmin)
	if code, body := postJSON(t, admin, s.url+"/v1/volumes/"+url.PathEscape("web01/vol")+"/machine",
		pipeline.MachineRequest{Machine: "web01b"}); code != http.StatusOK {
		t.Fatalf("reassign: %d %s", code, body)
	}
	a.writeRandom(rng, 5)
	a.tag("refused")
	waitStopped(t, a, "web01b")
	a.close()
	a.open(s, 0, s.client("web01b", pki.RoleAgent))
	a.writeRandom(rng, 5)
	seq, sum = a.tag("web01b's")
	want[seq] = sum
	s.checkPoints(a, want)
	if m := s.status(id).Info.Machine; m != "web01b" {
		t.Fatalf("machine after reassign: %q", m)
	}
	if code, body := postJSON(t, s.client("web01b", pki.RoleAgent), s.url+"/v1/volumes/"+id+"/machine",
		pipeline.MachineRequest{Machine: "web02"}); code != http.StatusForbidden {
		t.Fatalf("reassign by an agent: %d %s", code, body)
	}
}

// An agent sees only its own volumes; an admin sees all. A name two
// machines use is refused with both listed; MACHINE/NAME picks one.
func TestVisibilityAndNames(t *testing.T) {
	s := newSite(t, file.New(t.TempDir()))
	web01, web02 := s.client("web01", pki.RoleAgent), s.client("web02", pki.RoleAgent)
	a := newAgentVol(t, s, 1<<20, 0, web01)
	b := newAgentVol(t, s, 1<<20, 0, web02)
	a.waitSynced()
	b.waitSynced()
	s.waitApplied(a.vol.VolumeID(), a.vol.Status().NextSeq-1)
	s.waitApplied(b.vol.VolumeID(), b.vol.Status().NextSeq-1)

	list := func(c *http.Client) []string {
		code, body := get(t, c, s.url+"/v1/volumes")
		var vols []pipeline.VolumeStatus
		if code != http.StatusOK || json.Unmarshal([]byte(body), &vols) != nil {
			t.Fatalf("GET /v1/volumes: %d %s", code, body)
		}
		var out []string
		for _, v := range vols {
			out = append(out, v.Info.Machine+"/"+v.Info.Name)
		}
		return out
	}
	if got := fmt.Sprint(list(web01)); got != "[web01/vol]" {
		t.Fatalf("web01 lists %s", got)
	}
	admin := s.client("admin", pki.RoleAdmin)
	if got := fmt.Sprint(list(admin)); got != "[web01/vol web02/vol]" {
		t.Fatalf("admin lists %s", got)
	}
	if code, body := get(t, web01, s.url+"/v1/volumes/"+b.vol.VolumeID()); code != http.StatusForbidden ||
		!strings.Contains(body, "web02") || !strings.Contains(body, "web01") {
		t.Fatalf("web01 asking for web02's volume by id: %d %s", code, body)
	}
	if code, _ := get(t, web01, s.url+"/v1/volumes/"+url.PathEscape("web02/vol")); code != http.StatusNotFound {
		t.Fatalf("web01 asking for web02/vol: %d, want 404 (not its own, not listed)", code)
	}
	if code, body := get(t, web01, s.url+"/v1/volumes/vol"); code != http.StatusOK || !strings.Contains(body, a.vol.VolumeID()) {
		t.Fatalf("web01 asking for vol: %d %s", code, body)
	}
	code, body := get(t, admin, s.url+"/v1/volumes/vol/points")
	if code != http.StatusBadRequest || !strings.Contains(body, "web01/vol") || !strings.Contains(body, "web02/vol") {
		t.Fatalf("admin asking for the points of vol: %d %s", code, body)
	}
	for _, key := range []string{url.PathEscape("web02/vol"), b.vol.VolumeID()} {
		if code, body := get(t, admin, s.url+"/v1/volumes/"+key); code != http.StatusOK || !strings.Contains(body, b.vol.VolumeID()) {
			t.Fatalf("admin asking for %s: %d %s", key, code, body)
		}
	}
	if code, body := postJSON(t, admin, s.url+"/v1/volumes/"+url.PathEscape("web02/vol")+"/machine",
		pipeline.MachineRequest{Machine: "web01"}); code != http.StatusBadRequest || !strings.Contains(body, "already has a volume") {
		t.Fatalf("reassigning web02/vol to web01, which has a vol: %d %s", code, body)
	}
	if code, body := postJSON(t, admin, s.url+"/v1/volumes/"+url.PathEscape("web02/vol")+"/machine",
		pipeline.MachineRequest{Machine: "not a name"}); code != http.StatusBadRequest {
		t.Fatalf("reassigning to an invalid name: %d %s", code, body)
	}
}

// A damaged replica does not stop the server: the others are served, the
// damaged one is listed as failed with its reason. A damaged spool record
// is rebuilt from the target when the agent asks again.
func TestServerStartsWithAFailedVolume(t *testing.T) {
	dir := t.TempDir()
	s := newSite(t, file.New(dir))
	rng := rand.New(rand.NewPCG(3, 4))
	a := newAgentVol(t, s, 1<<20, 0, s.client("web01", pki.RoleAgent))
	b := newAgentVol(t, s, 1<<20, 0, s.client("web02", pki.RoleAgent))
	c := newAgentVol(t, s, 1<<20, 0, s.client("web03", pki.RoleAgent))
	for _, v := range []*agentVol{a, b, c} {
		v.waitSynced()
		seq, _ := v.tag("synced")
		s.waitApplied(v.vol.VolumeID(), seq)
	}
	s.stop()
	if err := os.WriteFile(filepath.Join(dir, a.vol.VolumeID(), "state.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "spool", c.vol.VolumeID(), "volume.json"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(s.addr)
	st := s.status(a.vol.VolumeID())
	if !strings.Contains(st.Failed, "state.json") {
		t.Fatalf("the damaged volume's status: %+v; want it failed, naming state.json", st)
	}
	if st := s.status(c.vol.VolumeID()); st.Failed == "" {
		t.Fatalf("the volume with a damaged spool record: %+v; want it failed until its agent comes back", st)
	}
	want := map[uint64]string{}
	b.writeRandom(rng, 10)
	seq, sum := b.tag("after restart")
	want[seq] = sum
	s.checkPoints(b, want)
	c.writeRandom(rng, 10)
	seq, sum = c.tag("after restart")
	s.checkPoints(c, map[uint64]string{seq: sum})
	if st := s.status(c.vol.VolumeID()); st.Failed != "" || st.Info.Machine != "web03" {
		t.Fatalf("the rebuilt volume: %+v", st)
	}
	a.writeRandom(rng, 2)
	a.tag("refused")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(a.ship.Status().LastError, "state.json") {
		if time.Now().After(deadline) {
			t.Fatalf("the damaged volume's agent: %+v", a.ship.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A process server's client certificate (for its heartbeats to the
// configuration server) is refused here, even named like a machine.
func TestProcessServerCertificateRefused(t *testing.T) {
	s := newSite(t, memory.New())
	ps := s.client("web01", pki.RoleProcessServer)
	resp, err := ps.Get("https://" + s.addr + "/v1/volumes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "role process-server") {
		t.Fatalf("GET /v1/volumes with a process server's certificate: %s %s, want 403 naming the role", resp.Status, body)
	}
}
