package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/failover"
	"lifeboat/pipeline"
)

// jobsCLI runs a jobs command against the configuration server at ctl with
// the site's admin identity.
func (s *site) jobsCLI(ctl string, args ...string) cliResult {
	s.t.Helper()
	return lifeboat(s.t, append(args, "--server", "https://"+ctl, "--data-dir", s.dir)...)
}

// jobsJSON decodes the JSON a jobs command must print.
func jobsJSON[T any](s *site, ctl string, args ...string) T {
	s.t.Helper()
	r := s.jobsCLI(ctl, append(args, "--output", "json")...)
	var v T
	if r.code != 0 {
		s.t.Fatalf("%v", r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		s.t.Fatalf("%v: %v", r, err)
	}
	return v
}

// A test failover and its cleanup, a failover, a reprotect and a failback
// run as jobs, whoever sends them: `lifeboat jobs` lists them succeeded
// with their kinds and volume, `job show` reports each one's steps,
// progress and result, and a refused request (a failback of a volume that
// is not failed over) is a failed job with the site's error. The recovery
// commands name their job.
func TestRecoveryJobs(t *testing.T) {
	need(t, "qemu-io", "nbdcopy")
	const size = 128 << 20
	ctl := freeAddr(t)
	s := newRecoverySite(t, "--control-listen", ctl)
	p := protect(t, s, size, 16<<20)
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 2M", "-c", "flush", p.uri)
	p.checkLatest(start)

	s.recovery("test-failover", "start", "disk", "--point", "latest")
	r := s.cli("test-failover", "cleanup", "disk")
	if r.code != 0 || !strings.Contains(r.stdout, "(job 2: lifeboat job show 2)") {
		t.Fatalf("test-failover cleanup: want exit 0 naming job 2\n%v", r)
	}
	r = s.cli("failback", "disk")
	if r.code != 1 || !strings.Contains(r.stderr, "not failed over") || !strings.Contains(r.stderr, "(job 3:") {
		t.Fatalf("failback of a volume not failed over: want exit 1 naming job 3\n%v", r)
	}

	if err := p.a.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent stop: %v", err)
	}
	m := newMaster(t, s, p)
	fo := s.recovery("failover", "start", "disk", "--point", "latest")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 8M 1M", "-c", "flush", fo.URL)
	s.recovery("reprotect", "disk", "--to", m.url(), "--force")
	failed := filepath.Join(t.TempDir(), "failover.img")
	run(t, "nbdcopy", fo.URL, failed)
	fb := s.recovery("failback", "disk")
	if fb.Reprotect == nil || fb.Reprotect.Failback == nil {
		t.Fatalf("failback: %+v", fb)
	}
	if got, want := sha256File(t, p.img), sha256File(t, failed); got != want {
		t.Fatal("after the failback the primary disk differs from the failover volume")
	}

	jobs := jobsJSON[[]control.Job](s, ctl, "jobs")
	want := []struct {
		kind  string
		state control.JobState
	}{
		{failover.JobFailback, control.JobSucceeded},
		{failover.JobReprotect, control.JobSucceeded},
		{failover.JobFailover, control.JobSucceeded},
		{failover.JobFailback, control.JobFailed},
		{failover.JobTestFailoverCleanup, control.JobSucceeded},
		{failover.JobTestFailover, control.JobSucceeded},
	}
	if len(jobs) != len(want) {
		t.Fatalf("jobs: %d, want %d: %+v", len(jobs), len(want), jobs)
	}
	for i, w := range want {
		j := jobs[i]
		if j.ID != uint64(len(want)-i) || j.Kind != w.kind || j.State != w.state || j.Volume != "web01/disk" || j.RequestedBy == "" || j.Ended == nil {
			t.Errorf("job %d: %+v; want #%d, %s %s of web01/disk, ended, with who asked", i, j, len(want)-i, w.kind, w.state)
		}
		if w.state == control.JobSucceeded && (j.Progress == nil || *j.Progress != 100 || j.Result == nil || j.Error != "") {
			t.Errorf("job %d (%s): progress %v, result %v, error %q; want 100 %%, a result and no error", j.ID, j.Kind, j.Progress, j.Result, j.Error)
		}
	}
	if j := jobs[3]; !strings.Contains(j.Error, "not failed over") || j.Result != nil {
		t.Errorf("the refused failback's job: %+v; want the site's error and no result", j)
	}
	if limited := jobsJSON[[]control.Job](s, ctl, "jobs", "--limit", "2"); len(limited) != 2 || limited[0].ID != 6 {
		t.Errorf("jobs --limit 2: %+v; want the two newest", limited)
	}

	back := jobsJSON[control.Job](s, ctl, "job", "show", "6")
	if back.Kind != failover.JobFailback || back.State != control.JobSucceeded || *back.Progress != 100 ||
		back.Result == nil || back.Result.Reprotect == nil || back.Result.Reprotect.Failback == nil ||
		back.Result.Reprotect.Failback.Seq != fb.Reprotect.Failback.Seq {
		t.Fatalf("job show 6: %+v; want the failback with its result", back)
	}
	if len(back.Steps) == 0 || !strings.HasPrefix(back.Steps[len(back.Steps)-1].Step, "failback:") {
		t.Errorf("job show 6: steps %+v; want the failback's steps", back.Steps)
	}
	for _, st := range back.Steps {
		t.Logf("failback step at %s: %s (%v)", st.At.Format(time.TimeOnly), st.Step, pctText(st.Progress))
	}
	tf := jobsJSON[control.Job](s, ctl, "job", "show", "1")
	if tf.Result == nil || tf.Result.Kind != pipeline.RecoveryTest {
		t.Errorf("job show 1: result %+v; want the test failover's volume", tf.Result)
	}

	r = s.jobsCLI(ctl, "job", "show", "3", "--follow")
	if r.code != 1 || !strings.Contains(r.out(), "failback of web01/disk, failed") || !strings.Contains(r.stderr, "not failed over") {
		t.Errorf("job show 3 --follow of the failed job: want exit 1 with its error\n%v", r)
	}
	r = s.jobsCLI(ctl, "jobs")
	if r.code != 0 || !strings.Contains(r.stdout, "reprotect") || !strings.Contains(r.stdout, "test-failover-cleanup") {
		t.Errorf("jobs: want a table of the six\n%v", r)
	}

	// The jobs are the site's record: a restarted server still has them.
	s.stop(syscall.SIGTERM)
	s.start()
	waitFor(t, 30*time.Second, "the configuration server", func() bool { return s.jobsCLI(ctl, "jobs").code == 0 })
	if again := jobsJSON[[]control.Job](s, ctl, "jobs"); len(again) != len(want) || again[0].State != control.JobSucceeded {
		t.Errorf("jobs after a restart: %+v; want the same six", again)
	}
}

func pctText(p *float64) string {
	if p == nil {
		return "no percent"
	}
	return fmt.Sprintf("%.0f %%", *p)
}
