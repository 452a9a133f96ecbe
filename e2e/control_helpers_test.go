package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/control"
)

// Helpers of the control-plane tests: a site started from nothing with its
// configuration server, machines registered with the passphrase that
// 'server init' printed, managed agents (no --volume), and the site CLI.

// ctlSite is a recovery site with its configuration server, driven only
// through the lifeboat CLI.
type ctlSite struct {
	t        *testing.T
	dir      string // --data-dir
	data     string // process server (data port) address
	ctl      string // configuration server (control port) address
	pass     string // the file holding the registration passphrase
	delay    string // LIFEBOAT_FAULT_SEGMENT_DELAY_FILE: the link's delay
	initOut  string // what 'server init' printed
	srv      *agentProc
	srvFlags []string
}

var passphraseLine = regexp.MustCompile(`(?m)^Registration passphrase.*\n\s*\n\s+(\S+)\s*$`)

// newCtlSite runs 'server init', keeps the passphrase it printed in a file
// and starts 'lifeboat server' with its control port and extra flags. The
// server holds each segment upload for the duration the file s.delay
// holds (the test build's slow link), none while it is empty.
func newCtlSite(t *testing.T, flags ...string) *ctlSite {
	t.Helper()
	tmp := t.TempDir()
	s := &ctlSite{t: t, dir: filepath.Join(tmp, "server"), data: freeAddr(t), ctl: freeAddr(t),
		pass: filepath.Join(tmp, "passphrase"), delay: filepath.Join(tmp, "delay"), srvFlags: flags}
	s.initOut = run(t, binary, "server", "init", "--data-dir", s.dir)
	m := passphraseLine.FindStringSubmatch(s.initOut)
	if m == nil {
		t.Fatalf("server init printed no registration passphrase:\n%s", s.initOut)
	}
	if err := os.WriteFile(s.pass, []byte(m[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server output:\n%s", s.log())
		}
	})
	return s
}

func (s *ctlSite) start() {
	s.t.Helper()
	args := append([]string{"server", "--data-dir", s.dir, "--listen", s.data, "--control-listen", s.ctl,
		"--advertise", "https://" + s.data, "--recovery-nbd", "127.0.0.1:0"}, s.srvFlags...)
	p, err := startProc(s.t, []string{"LIFEBOAT_FAULT_SEGMENT_DELAY_FILE=" + s.delay}, func(_ *agentProc, line string) bool {
		return strings.HasPrefix(line, "configuration server listening on")
	}, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.srv = p
}

func (s *ctlSite) controlURL() string { return "https://" + s.ctl }
func (s *ctlSite) dataURL() string    { return "https://" + s.data }

// log is everything the site's server printed.
func (s *ctlSite) log() string { return s.srv.Output() }

// cli runs a site command with the configuration server and admin identity.
func (s *ctlSite) cli(args ...string) cliResult {
	s.t.Helper()
	return lifeboat(s.t, append(args, "--server", s.controlURL(), "--data-dir", s.dir)...)
}

// ok runs a site command that must succeed and returns its standard output.
func (s *ctlSite) ok(args ...string) string {
	s.t.Helper()
	r := s.cli(args...)
	if r.code != 0 {
		s.t.Fatalf("%v", r)
	}
	return r.stdout
}

// status is 'lifeboat status --output json' of the site.
func (s *ctlSite) status() control.SiteStatus {
	s.t.Helper()
	var st control.SiteStatus
	out := s.ok("status", "--output", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("status --output json: %v\n%s", err, out)
	}
	return st
}

// item is an item of the site's status, or nil.
func (s *ctlSite) item(machine, volume string) *control.ItemStatus {
	s.t.Helper()
	for _, it := range s.status().Items {
		if it.Machine == machine && it.Volume == volume {
			return &it
		}
	}
	return nil
}

// events is 'lifeboat events --output json'.
func (s *ctlSite) events() []control.Event {
	s.t.Helper()
	var es []control.Event
	out := s.ok("events", "--output", "json")
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		s.t.Fatalf("events --output json: %v\n%s", err, out)
	}
	return es
}

// event is the newest event of code about subject, or nil.
func (s *ctlSite) event(code control.Code, subject string) *control.Event {
	s.t.Helper()
	es := s.events()
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].Code == code && es[i].Subject == subject {
			return &es[i]
		}
	}
	return nil
}

// waitEvent waits until the newest event of code about subject is open
// (open true) or cleared (open false), and returns it.
func (s *ctlSite) waitEvent(code control.Code, subject string, open bool, timeout time.Duration) control.Event {
	s.t.Helper()
	var e *control.Event
	what := "cleared"
	if open {
		what = "open"
	}
	waitFor(s.t, timeout, "event "+string(code)+" about "+subject+" "+what, func() bool {
		e = s.event(code, subject)
		return e != nil && (e.Cleared == nil) == open
	})
	return *e
}

// waitItem waits until the item's status satisfies cond and returns it.
func (s *ctlSite) waitItem(machine, volume, what string, timeout time.Duration, cond func(it *control.ItemStatus) bool) control.ItemStatus {
	s.t.Helper()
	var it *control.ItemStatus
	waitFor(s.t, timeout, machine+"/"+volume+" "+what, func() bool {
		it = s.item(machine, volume)
		return it != nil && cond(it)
	})
	return *it
}

// register registers machine name with the passphrase file and returns its
// identity directory.
func (s *ctlSite) register(name string) string {
	s.t.Helper()
	id := filepath.Join(s.t.TempDir(), "identity-"+name)
	run(s.t, binary, "agent", "register", "--server", s.controlURL(), "--passphrase-file", s.pass, "--name", name, "--identity-dir", id)
	return id
}

// point exports a point of machine/volume with 'points export' and
// returns its sha256.
func (s *ctlSite) point(machine, volume string, seq uint64) string {
	s.t.Helper()
	out := filepath.Join(s.t.TempDir(), "point.img")
	res := run(s.t, binary, "points", "export", "--server", s.dataURL(), "--data-dir", s.dir, "--volume", machine+"/"+volume,
		"--point", fmt.Sprint(seq), "--out", out)
	m := exportSum.FindStringSubmatch(res)
	if m == nil {
		s.t.Fatalf("points export printed no sha256:\n%s", res)
	}
	os.Remove(out)
	return m[1]
}

// managed is a managed agent: 'lifeboat agent' with an identity and no
// --volume.
type managed struct {
	t        *testing.T
	name     string
	identity string
	journal  string
	extra    []string
	p        *agentProc
	nbd      string // NBD address of the running agent
	past     []string
}

var nbdServing = regexp.MustCompile(`(?m)^serving NBD at (\S+) `)

// startManaged starts a managed agent for a registered machine.
func startManaged(t *testing.T, name, identity string, extra ...string) *managed {
	t.Helper()
	m := &managed{t: t, name: name, identity: identity, journal: filepath.Join(t.TempDir(), "journal-"+name), extra: extra}
	m.start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent %s output:\n%s", name, m.log())
		}
	})
	return m
}

func (m *managed) start() {
	m.t.Helper()
	args := append([]string{"agent", "--identity-dir", m.identity, "--journal-dir", m.journal, "--nbd", "127.0.0.1:0",
		"--segment-age", "200ms", "--max-backoff", "2s"}, m.extra...)
	p, err := startProc(m.t, nil, func(_ *agentProc, line string) bool {
		return strings.HasPrefix(line, "lifeboat agent "+m.name+" managed by")
	}, args...)
	if err != nil {
		m.t.Fatal(err)
	}
	sub := nbdServing.FindStringSubmatch(p.Output())
	if sub == nil {
		m.t.Fatalf("the managed agent printed no NBD address:\n%s", p.Output())
	}
	m.p, m.nbd = p, sub[1]
}

// stop stops the agent with sig and keeps its output.
func (m *managed) stop(sig syscall.Signal) {
	m.t.Helper()
	m.p.stop(m.t, sig)
	m.past = append(m.past, m.p.Output())
	m.p = nil
}

func (m *managed) log() string {
	out := strings.Join(m.past, "")
	if m.p != nil {
		out += m.p.Output()
	}
	return out
}

// uri is the NBD URI of a volume the agent serves.
func (m *managed) uri(volume string) string { return "nbd://" + m.nbd + "/" + volume }

// ctlProtected is a site with machine web01 registered, policy gold (RPO
// threshold 5 s, a point every second) and web01's volume disk (a sparse
// file of size the agent creates) protected, its first point taken.
type ctlProtected struct {
	s   *ctlSite
	a   *managed
	img string
}

func newCtlProtected(t *testing.T, size string, siteFlags []string, agentFlags ...string) *ctlProtected {
	t.Helper()
	s := newCtlSite(t, siteFlags...)
	id := s.register("web01")
	s.ok("policy", "create", "gold", "--rpo-threshold", "5s", "--crash-interval", "1s")
	a := startManaged(t, "web01", id, agentFlags...)
	img := filepath.Join(t.TempDir(), "disk.img")
	s.ok("protect", "--machine", "web01", "--volume", "disk="+img+",size="+size, "--policy", "gold", "--wait", "--timeout", "2m")
	s.waitItem("web01", "disk", "protected with a point", time.Minute, func(it *control.ItemStatus) bool {
		return it.State == control.StateProtected && it.LatestPoint != nil
	})
	return &ctlProtected{s: s, a: a, img: img}
}

// settle waits until the writes are over and replicated: the site's
// latest point was tagged after since and is the newest record of the
// agent's journal, acknowledged (twice in a row, 1.2 s apart: the agent
// rewrites its status file every heartbeat). It returns the item and the
// image's sha256 then, and checks that the point exported has it.
func (p *ctlProtected) settle(since time.Time) control.ItemStatus {
	p.s.t.Helper()
	var it *control.ItemStatus
	var seq uint64
	hits := 0
	waitFor(p.s.t, 90*time.Second, "the agent's last record to be a tag that is the site's latest point", func() bool {
		it = p.s.item("web01", "disk")
		st := shipperStatus(p.s.t, p.a.journal, "disk")
		if it != nil && it.LatestPoint != nil && it.LatestPoint.Time.After(since) &&
			st.Tracker.NextSeq == it.LatestPoint.Seq+1 && st.AckedSeq == it.LatestPoint.Seq {
			if hits > 0 && seq == it.LatestPoint.Seq {
				return true
			}
			seq, hits = it.LatestPoint.Seq, 1
			time.Sleep(1200 * time.Millisecond)
			return false
		}
		hits = 0
		return false
	})
	want := sha256File(p.s.t, p.img)
	if got := p.s.point("web01", "disk", seq); got != want {
		p.s.t.Fatalf("recovery point %d has sha256 %s, the source at that tag %s", seq, got, want)
	}
	return *it
}
