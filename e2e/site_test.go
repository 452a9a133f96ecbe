package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// site is a recovery site: `lifeboat server` as a separate process with its
// CA in dir, on a fixed loopback port so that a restarted server is found
// again by the agents, and one agent certificate (web01).
type site struct {
	t     *testing.T
	dir   string // --data-dir
	addr  string
	certs string // web01.crt, web01.key, ca.crt
	env   []string
	args  []string // extra server flags (--target …)
	srv   *agentProc
	past  []string // output of the servers that exited
}

// newSite initialises a site and starts its server; env is added to the
// server's environment (fault injection).
func newSite(t *testing.T, env ...string) *site {
	t.Helper()
	return newSiteWith(t, env, nil)
}

// newSiteWith is newSite with extra server flags.
func newSiteWith(t *testing.T, env, args []string) *site {
	t.Helper()
	return newSiteAt(t, filepath.Join(t.TempDir(), "server"), env, args)
}

// newSiteAt is newSiteWith with the server's data directory at dir.
func newSiteAt(t *testing.T, dir string, env, args []string) *site {
	t.Helper()
	if !slices.Contains(args, "--recovery-nbd") { // not the fixed default: tests run side by side
		args = append(slices.Clone(args), "--recovery-nbd", "127.0.0.1:0")
	}
	if !slices.Contains(args, "--control-listen") { // nor the configuration server's
		args = append(slices.Clone(args), "--control-listen", "127.0.0.1:0")
	}
	s := &site{t: t, dir: dir, certs: filepath.Join(t.TempDir(), "certs"), env: env, args: args}
	run(t, binary, "server", "init", "--data-dir", s.dir)
	run(t, binary, "certs", "issue", "--data-dir", s.dir, "--name", "web01", "--out", s.certs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	ln.Close()
	s.start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server output:\n%s", s.log())
		}
	})
	return s
}

func (s *site) url() string { return "https://" + s.addr }

// targetArgs are the server's extra flags without --recovery-nbd and
// --control-listen, which only lifeboat server has (for a process-server on the same target).
func (s *site) targetArgs() []string {
	var out []string
	for i := 0; i < len(s.args); i++ {
		if s.args[i] == "--recovery-nbd" || s.args[i] == "--control-listen" {
			i++
			continue
		}
		out = append(out, s.args[i])
	}
	return out
}

// start starts the server (again).
func (s *site) start() {
	s.t.Helper()
	p, err := startProc(s.t, s.env, func(_ *agentProc, line string) bool {
		return strings.HasPrefix(line, "process server listening on")
	}, append([]string{"server", "--data-dir", s.dir, "--listen", s.addr}, s.args...)...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.srv = p
}

// stop stops the server with sig and keeps its output.
func (s *site) stop(sig syscall.Signal) {
	s.t.Helper()
	s.srv.stop(s.t, sig)
	s.past = append(s.past, s.srv.Output())
	s.srv = nil
}

// log is everything every server of this site printed.
func (s *site) log() string {
	out := strings.Join(s.past, "")
	if s.srv != nil {
		out += s.srv.Output()
	}
	return out
}

// agentArgs are the flags that point an agent at this site.
func (s *site) agentArgs() []string {
	return []string{"--server", s.url(), "--cert", filepath.Join(s.certs, "web01.crt"),
		"--key", filepath.Join(s.certs, "web01.key"), "--ca", filepath.Join(s.certs, "ca.crt")}
}

// admin is an HTTPS client with the site's admin identity.
func (s *site) admin() *http.Client {
	s.t.Helper()
	p := pki.Paths(s.dir)
	conf, err := pki.ClientTLS(p.AdminCert, p.AdminKey, p.CACert)
	if err != nil {
		s.t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 30 * time.Second}
}

// volume returns the server's view of a volume, or false if it has none.
func (s *site) volume(name string) (pipeline.VolumeStatus, bool) {
	s.t.Helper()
	var st pipeline.VolumeStatus
	resp, err := s.admin().Get(s.url() + "/v1/volumes/" + name)
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, false
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		s.t.Fatal(err)
	}
	return st, true
}

// points lists a volume's recovery points with `lifeboat points list`.
func (s *site) points(name string) []pipeline.Point {
	s.t.Helper()
	out := run(s.t, binary, "points", "list", "--server", s.url(), "--data-dir", s.dir, "--volume", name, "--output", "json")
	var pts []pipeline.Point
	if err := json.Unmarshal([]byte(out), &pts); err != nil {
		s.t.Fatalf("points list: %v\n%s", err, out)
	}
	return pts
}

var exportSum = regexp.MustCompile(`(?m)^sha256 ([0-9a-f]{64})$`)

// export writes a point with `lifeboat points export` and returns the
// sha256 it printed, after checking it against the file it wrote.
func (s *site) export(name, point string) string {
	s.t.Helper()
	out := filepath.Join(s.t.TempDir(), "point.img")
	res := run(s.t, binary, "points", "export", "--server", s.url(), "--data-dir", s.dir, "--volume", name,
		"--point", point, "--out", out)
	m := exportSum.FindStringSubmatch(res)
	if m == nil {
		s.t.Fatalf("points export printed no sha256:\n%s", res)
	}
	if got := sha256File(s.t, out); got != m[1] {
		s.t.Fatalf("points export printed sha256 %s, the file it wrote has %s", m[1], got)
	}
	os.Remove(out)
	return m[1]
}

// waitPoint waits until the site has a point of volume name tagged after
// t0, and returns the newest.
func (s *site) waitPoint(name string, t0 time.Time, timeout time.Duration) pipeline.Point {
	s.t.Helper()
	var last pipeline.Point
	waitFor(s.t, timeout, fmt.Sprintf("a recovery point of %s tagged after %s", name, t0.Format(time.RFC3339Nano)), func() bool {
		st, ok := s.volume(name)
		if !ok || st.LatestPoint == nil {
			return false
		}
		last = *st.LatestPoint
		return last.Time.After(t0)
	})
	return last
}

// shipperStatus reads the status a running agent writes beside a volume's
// journal every second.
func shipperStatus(t *testing.T, jroot, name string) pipeline.ShipperStatus {
	t.Helper()
	var st pipeline.ShipperStatus
	b, err := os.ReadFile(filepath.Join(jroot, name, "status.json"))
	if err != nil {
		return st
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("status.json: %v\n%s", err, b)
	}
	return st
}

// waitFor polls cond every 100 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// appliedSegments returns the (generation, first seq) of every "segment
// applied" line in a server log, with how often each appears.
func appliedSegments(log string) map[string]int {
	re := regexp.MustCompile(`segment applied volume=(\S+) generation=(\d+) first_seq=(\d+) last_seq=(\d+)`)
	seen := map[string]int{}
	for _, m := range re.FindAllStringSubmatch(log, -1) {
		seen[m[1]+"/"+m[2]+"/"+m[3]+"-"+m[4]]++
	}
	return seen
}
