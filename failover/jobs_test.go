package failover_test

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/failover"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// jobLog is a JobRecorder that remembers every call.
type jobLog struct {
	mu   sync.Mutex
	jobs []*loggedJob
}

type loggedJob struct {
	kind, volume, by string
	steps            []string
	pcts             []float64
	ended            bool
	err              error
	result           *pipeline.RecoveryState
}

func (l *jobLog) JobStarted(kind, volume, by string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.jobs = append(l.jobs, &loggedJob{kind: kind, volume: volume, by: by})
	return uint64(len(l.jobs))
}

func (l *jobLog) JobProgress(id uint64, step string, pct float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j := l.jobs[id-1]
	j.steps, j.pcts = append(j.steps, step), append(j.pcts, pct)
}

func (l *jobLog) JobFinished(id uint64, err error, result *pipeline.RecoveryState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j := l.jobs[id-1]
	j.ended, j.err, j.result = true, err, result
}

func (l *jobLog) job(id uint64) loggedJob {
	l.mu.Lock()
	defer l.mu.Unlock()
	return *l.jobs[id-1]
}

// Every recovery request of the API is a job, named in the answer's
// header, with its steps, its result on success and its error on failure.
func TestRecoveryRequestsAreJobs(t *testing.T) {
	jobs := &jobLog{}
	rs := newRecoverySiteWith(t, jobs)
	rs.point(rand.New(rand.NewPCG(7, 8)))
	p := pki.Paths(rs.site.DataDir)
	conf, err := pki.ClientTLS(p.AdminCert, p.AdminKey, p.CACert)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
	call := func(method, path, body string) (uint64, int) {
		t.Helper()
		req, err := http.NewRequest(method, rs.url+"/v1/volumes/web01%2Fdisk"+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		id, err := strconv.ParseUint(resp.Header.Get(failover.JobHeader), 10, 64)
		if err != nil {
			t.Fatalf("%s %s: %s header %q: %v", method, path, failover.JobHeader, resp.Header.Get(failover.JobHeader), err)
		}
		return id, resp.StatusCode
	}
	planned, _ := json.Marshal(failover.Request{Planned: true, Timeout: 30 * time.Second})
	steps := []struct {
		method, path, body string
		kind               string
		code               int
		errHas             string
	}{
		{"POST", "/test-failover", `{"point":"latest-processed"}`, failover.JobTestFailover, 200, ""},
		{"DELETE", "/test-failover", "", failover.JobTestFailoverCleanup, 200, ""},
		{"POST", "/failback", "{}", failover.JobFailback, 409, "not failed over"},
		{"POST", "/failover", `{"bogus":1}`, failover.JobFailover, 400, "request body"},
		{"POST", "/failover", string(planned), failover.JobFailover, 200, ""},
		{"POST", "/failover/commit", "", failover.JobCommit, 200, ""},
	}
	for _, s := range steps {
		id, code := call(s.method, s.path, s.body)
		j := jobs.job(id)
		if code != s.code || j.kind != s.kind || j.volume != "web01/disk" || j.by == "" || !j.ended {
			t.Fatalf("%s %s: %d, job %+v; want %d, an ended %s job of web01/disk with who asked", s.method, s.path, code, j, s.code, s.kind)
		}
		switch {
		case s.errHas != "" && (j.err == nil || !strings.Contains(j.err.Error(), s.errHas) || j.result != nil):
			t.Errorf("%s %s: job error %v, result %v; want an error with %q and no result", s.method, s.path, j.err, j.result, s.errHas)
		case s.errHas == "" && (j.err != nil || j.result == nil || j.result.Volume.Name != "disk"):
			t.Errorf("%s %s: job error %v, result %+v; want success with the recovery volume", s.method, s.path, j.err, j.result)
		}
	}
	fo := jobs.job(5)
	if !slices.ContainsFunc(fo.steps, func(s string) bool { return strings.HasPrefix(s, "planned failover: waiting for the agent") }) {
		t.Errorf("planned failover job's steps %q; want the wait for the agent", fo.steps)
	}
	if fo.result.Kind != pipeline.RecoveryFailover || !fo.result.Planned {
		t.Errorf("planned failover job's result %+v; want a planned failover", fo.result)
	}

	// The methods called directly (not through the API) make no job.
	n := len(jobs.jobs)
	sv, err := rs.site.Server.Volume(t.Context(), "web01/disk")
	if err != nil {
		t.Fatal(err)
	}
	rs.site.Manager.Commit(t.Context(), sv) // already committed: refused, but no matter
	if len(jobs.jobs) != n {
		t.Errorf("a direct call made a job")
	}
}
