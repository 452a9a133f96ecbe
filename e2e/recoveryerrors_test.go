package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// badRequest is a recovery request that must be refused.
type badRequest struct {
	name string
	args []string // lifeboat CLI arguments, the site's --server and --data-dir added
	code int      // exit code: 1 refused by the site, 2 usage error
	want []string // what the message must say
}

// refused runs each request and checks its exit code, its message, and
// that the site's recovery volumes and the volume's status did not
// change.
func (s *site) refused(t *testing.T, reqs ...badRequest) {
	t.Helper()
	for _, r := range reqs {
		before, _ := s.recoveryList()
		vs0, _ := s.volume("disk")
		res := s.cli(r.args...)
		if res.code != r.code {
			t.Fatalf("%s: want exit %d\n%v", r.name, r.code, res)
		}
		for _, w := range r.want {
			if !strings.Contains(res.stderr, w) {
				t.Fatalf("%s: the message does not say %q\n%v", r.name, w, res)
			}
		}
		if after, _ := s.recoveryList(); after != before {
			t.Fatalf("%s changed the recovery volumes:\n%s\nwere:\n%s", r.name, after, before)
		}
		if vs, _ := s.volume("disk"); len(vs.Recovery) != len(vs0.Recovery) || vs.PlannedFailover != "" {
			t.Fatalf("%s changed the volume's recovery state: %+v, was %+v", r.name, vs.Recovery, vs0.Recovery)
		}
		t.Logf("%s: exit %d: %s", r.name, res.code, strings.TrimSpace(res.stderr))
	}
}

// Each bad recovery request gets a clear error and changes nothing: an
// unknown volume; a pruned or unknown point; --at before the first point;
// a second test failover of the same volume; failover of a volume already
// failed over; commit without failover; change-point after commit;
// cleanup with nothing to clean; an agent certificate (403); contradictory
// flags (usage errors). Along the way, a live agent whose volume is failed
// over goes on journaling and tagging, and the site takes none of it.
func TestRecoveryBadRequests(t *testing.T) {
	need(t, "qemu-io")
	// Points older than 4 s are pruned (but the newest): the initial
	// replication's point goes once later points are applied.
	s := newRecoverySite(t, "--retention", "4s")
	p := protect(t, s, 64<<20, 8<<20)
	first := s.points("disk")[0]
	t0 := time.Now()
	waitFor(t, time.Minute, fmt.Sprintf("point %d to be pruned", first.Seq), func() bool {
		for _, pt := range s.points("disk") {
			if pt.Seq == first.Seq {
				run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x31 4M 64k", p.uri)
				return false
			}
		}
		return true
	})
	p.settle(t0)
	pts := s.points("disk")
	oldest := pts[0]
	beforeFirst := oldest.Time.Add(-time.Second).UTC().Format(time.RFC3339)
	t.Logf("point %d pruned; %d points retained, the oldest %d at %s", first.Seq, len(pts), oldest.Seq, oldest.Time.Format(time.RFC3339Nano))

	const agentRefusal = "this needs an admin client certificate"
	agentFlags := []string{"--cert", filepath.Join(s.certs, "web01.crt"), "--key", filepath.Join(s.certs, "web01.key"),
		"--ca", filepath.Join(s.certs, "ca.crt")}
	s.refused(t,
		badRequest{"test failover of an unknown volume", []string{"test-failover", "start", "nosuch"}, 1, []string{"no such volume", "nosuch"}},
		badRequest{"failover of an unknown volume", []string{"failover", "start", "web01/nosuch"}, 1, []string{"no such volume", "nosuch"}},
		badRequest{"commit of an unknown volume", []string{"failover", "commit", "nosuch"}, 1, []string{"no such volume"}},
		badRequest{"test failover of a pruned point", []string{"test-failover", "start", "disk", "--point", fmt.Sprint(first.Seq)}, 1,
			[]string{"not found", fmt.Sprintf("recovery point %d", first.Seq), "not retained"}},
		badRequest{"failover to a pruned point", []string{"failover", "start", "disk", "--point", fmt.Sprint(first.Seq)}, 1,
			[]string{"not found", fmt.Sprintf("recovery point %d", first.Seq)}},
		badRequest{"failover to an unknown point", []string{"failover", "start", "disk", "--point", "999999"}, 1,
			[]string{"not found", "recovery point 999999"}},
		badRequest{"failover to a point that is no number", []string{"failover", "start", "disk", "--point", "yesterday"}, 1,
			[]string{`point "yesterday"`}},
		badRequest{"test failover --at before the first point", []string{"test-failover", "start", "disk", "--at", beforeFirst}, 1,
			[]string{"not found", "no recovery point of web01/disk at or before " + beforeFirst, fmt.Sprintf("the oldest retained is %d", oldest.Seq)}},
		badRequest{"failover --at before the first point", []string{"failover", "start", "disk", "--at", beforeFirst}, 1,
			[]string{"no recovery point of web01/disk at or before"}},
		badRequest{"--point and --at together", []string{"failover", "start", "disk", "--point", "5", "--at", beforeFirst}, 2,
			[]string{"--point or --at, not both"}},
		badRequest{"--at that is no time", []string{"failover", "start", "disk", "--at", "yesterday"}, 2, []string{`"yesterday"`, "-at"}},
		badRequest{"--planned with --point", []string{"failover", "start", "disk", "--planned", "--point", "latest"}, 2,
			[]string{"--planned", "drop --point"}},
		badRequest{"--timeout without --planned", []string{"failover", "start", "disk", "--timeout", "5s"}, 2,
			[]string{"--timeout applies to --planned only"}},
		badRequest{"--force on failover start", []string{"failover", "start", "disk", "--force"}, 2, []string{"-force"}},
		badRequest{"commit without failover", []string{"failover", "commit", "disk"}, 1, []string{"not failed over", "nothing to commit"}},
		badRequest{"change-point without failover", []string{"failover", "change-point", "disk", "--point", "latest"}, 1, []string{"not failed over"}},
		badRequest{"cleanup with nothing to clean", []string{"test-failover", "cleanup", "disk"}, 1, []string{"no test failover to clean up"}},
		badRequest{"a volume argument missing", []string{"test-failover", "start"}, 2, []string{"VOLUME"}},
	)
	// The agent's certificate, through the CLI and the API: 403, logged.
	for _, args := range [][]string{{"test-failover", "list"}, {"test-failover", "start", "disk"}, {"failover", "start", "disk"}} {
		before, _ := s.recoveryList()
		res := lifeboat(t, append(append(args, "--server", s.url()), agentFlags...)...)
		if res.code != 1 || !strings.Contains(res.stderr, agentRefusal) || !strings.Contains(res.stderr, "403") {
			t.Fatalf("%s with an agent certificate: want exit 1 and a 403 saying an admin certificate is needed\n%v", args, res)
		}
		if after, _ := s.recoveryList(); after != before {
			t.Fatalf("%s with an agent certificate changed the recovery volumes:\n%s", args, after)
		}
	}
	for _, req := range []struct{ method, path, body string }{
		{http.MethodGet, "/v1/recovery", ""},
		{http.MethodPost, "/v1/volumes/disk/test-failover", `{"point":"latest"}`},
		{http.MethodPost, "/v1/volumes/disk/failover", `{"point":"latest"}`},
		{http.MethodPost, "/v1/volumes/disk/failover/point", `{"point":"latest","force":true}`},
		{http.MethodPost, "/v1/volumes/disk/failover/commit", ""},
		{http.MethodDelete, "/v1/volumes/disk/test-failover", ""},
	} {
		before, _ := s.recoveryList()
		code, body := agentCall(t, s, req.method, req.path, req.body)
		if code != http.StatusForbidden || !strings.Contains(body, agentRefusal) {
			t.Fatalf("%s %s with web01's certificate: HTTP %d %s", req.method, req.path, code, body)
		}
		// The server's log reaches us through a pipe, after the answer.
		logged := fmt.Sprintf("request refused method=%s path=%s status=403", req.method, req.path)
		waitFor(t, 10*time.Second, "the server to log: "+logged, func() bool {
			return strings.Contains(s.log(), logged) && strings.Contains(s.log(), "peer=web01 role=agent")
		})
		if after, _ := s.recoveryList(); after != before {
			t.Fatalf("%s %s with an agent certificate changed the recovery volumes:\n%s", req.method, req.path, after)
		}
	}

	// A test failover; a second one of the same volume is refused.
	tf := s.recovery("test-failover", "start", "disk", "--point", fmt.Sprint(oldest.Seq))
	if tf.Point.Seq != oldest.Seq {
		t.Fatalf("test failover of point %d: %+v", oldest.Seq, tf)
	}
	s.refused(t,
		badRequest{"a second test failover", []string{"test-failover", "start", "disk"}, 1,
			[]string{"not possible in the volume's recovery state", "a test failover of web01/disk is running", "cleanup"}},
		badRequest{"commit of a test failover", []string{"failover", "commit", "disk"}, 1, []string{"not failed over"}},
	)

	// A failover with the agent alive: the agent is told, keeps
	// journaling and tagging, and the site takes none of it.
	fo := s.recovery("failover", "start", "disk", "--point", "latest-processed")
	site0, _ := s.volume("disk")
	jdir := filepath.Join(p.jroot, "disk")
	last := site0.SpooledSeq
	for i := range 3 {
		run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dM 1M", 0x70+i, 20+i), "-c", "flush", p.uri)
		waitFor(t, 30*time.Second, fmt.Sprintf("the agent to journal a tag after seq %d", last), func() bool {
			seq, ok := lastTagAfter(t, jdir, last)
			if ok {
				last = seq
			}
			return ok
		})
		if i == 0 {
			// Its first segment is refused (410): the agent says why.
			waitFor(t, 30*time.Second, "the agent to say the volume is failed over", func() bool {
				return strings.Contains(shipperStatus(t, p.jroot, "disk").Stopped, "failed over at the site at")
			})
		}
	}
	site1, _ := s.volume("disk")
	ag := shipperStatus(t, p.jroot, "disk")
	if site1.SpooledSeq != site0.SpooledSeq || site1.Points != site0.Points || ag.AckedSeq > site0.SpooledSeq {
		t.Fatalf("the site took writes of a failed-over volume: spooled %d→%d, points %d→%d, agent acked %d",
			site0.SpooledSeq, site1.SpooledSeq, site0.Points, site1.Points, ag.AckedSeq)
	}
	t.Logf("failed over to point %d; the agent tagged up to seq %d (kept in its journal), the site stays at %d",
		fo.Point.Seq, last, site1.SpooledSeq)

	s.refused(t,
		badRequest{"failover of a volume already failed over", []string{"failover", "start", "disk", "--point", "latest-processed"}, 1,
			[]string{"not possible in the volume's recovery state", "already failed over", fmt.Sprintf("point %d", fo.Point.Seq)}},
		badRequest{"planned failover of a volume already failed over", []string{"failover", "start", "disk", "--planned", "--timeout", "3s"}, 1,
			[]string{"already failed over"}},
		badRequest{"change-point to a pruned point", []string{"failover", "change-point", "disk", "--point", fmt.Sprint(first.Seq)}, 1,
			[]string{"not found", fmt.Sprintf("recovery point %d", first.Seq)}},
		badRequest{"change-point --planned", []string{"failover", "change-point", "disk", "--planned"}, 2, []string{"-planned"}},
	)
	s.recovery("failover", "commit", "disk")
	s.refused(t,
		badRequest{"change-point after commit", []string{"failover", "change-point", "disk", "--point", fmt.Sprint(oldest.Seq), "--force"}, 1,
			[]string{"not possible in the volume's recovery state", "is committed", "can no longer change"}},
		badRequest{"commit twice", []string{"failover", "commit", "disk"}, 1, []string{"already committed"}},
		badRequest{"failover of a committed failover", []string{"failover", "start", "disk"}, 1, []string{"already failed over"}},
	)
	// The test failover is still there and cleans up; then nothing is left
	// to clean.
	if st := s.recovery("test-failover", "cleanup", "disk"); st.Point.Seq != oldest.Seq {
		t.Fatalf("cleanup: %+v", st)
	}
	s.refused(t, badRequest{"cleanup twice", []string{"test-failover", "cleanup", "disk"}, 1, []string{"no test failover to clean up"}})
}

// agentCall sends a request with the agent's certificate and returns the
// status code and body.
func agentCall(t *testing.T, s *site, method, path, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.url()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.agentClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
