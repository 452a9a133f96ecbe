package control_test

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/failover"
	"lifeboat/pipeline"
)

var _ failover.JobRecorder = (*control.JobRecorder)(nil)

// A job goes from running through its steps to its end; a phase's steps
// replace each other in the history, a new phase is appended.
func TestJobLifecycle(t *testing.T) {
	s := newSite(t)
	rec := s.srv.JobRecorder()
	rec.ProgressInterval = time.Nanosecond
	id := rec.JobStarted(failover.JobFailover, "web01/db", "admin")
	if id == 0 {
		t.Fatal("JobStarted returned no id")
	}
	rec.JobProgress(id, "applying: 3.0 MiB left", 10)
	s.clock.Add(time.Second)
	rec.JobProgress(id, "applying: 1.0 MiB left", 70)
	rec.JobProgress(id, "opening the view", -1)

	var j control.Job
	if err := s.call(http.MethodGet, "/v1/jobs/"+strconv.FormatUint(id, 10), nil, &j); err != nil {
		t.Fatal(err)
	}
	if j.State != control.JobRunning || j.Step != "opening the view" || j.Progress != nil || j.Ended != nil {
		t.Fatalf("running job: %+v; want running at step 'opening the view' without a percent", j)
	}
	if len(j.Steps) != 2 || j.Steps[0].Step != "applying: 1.0 MiB left" || *j.Steps[0].Progress != 70 {
		t.Fatalf("steps %+v; want the last of the applying phase, then the view", j.Steps)
	}

	st := pipeline.RecoveryState{Kind: pipeline.RecoveryFailover, Export: "web01.db.failover"}
	rec.JobFinished(id, nil, &st)
	rec.JobProgress(id, "late", 5) // after the end: ignored
	if err := s.call(http.MethodGet, "/v1/jobs/"+strconv.FormatUint(id, 10), nil, &j); err != nil {
		t.Fatal(err)
	}
	if j.State != control.JobSucceeded || j.Progress == nil || *j.Progress != 100 || j.Ended == nil ||
		j.Result == nil || j.Result.Export != st.Export || j.Step != "opening the view" {
		t.Fatalf("succeeded job: %+v; want succeeded, 100 %%, ended, with its result", j)
	}

	bad := rec.JobStarted(failover.JobFailback, "web01/db", "admin")
	rec.JobFinished(bad, errors.New("volume web01/db is not failed over"), nil)
	var list []control.Job
	if err := s.call(http.MethodGet, "/v1/jobs", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != bad || list[0].State != control.JobFailed ||
		!strings.Contains(list[0].Error, "not failed over") || list[0].Result != nil || list[1].ID != id {
		t.Fatalf("jobs %+v; want the failed failback first, then the failover", list)
	}
	if err := s.call(http.MethodGet, "/v1/jobs?limit=1", nil, &list); err != nil || len(list) != 1 || list[0].ID != bad {
		t.Fatalf("jobs?limit=1: %+v, %v; want the newest only", list, err)
	}
	for _, path := range []string{"/v1/jobs?limit=x", "/v1/jobs/x"} {
		var ce *control.CallError
		if err := s.call(http.MethodGet, path, nil, &list); !errors.As(err, &ce) || ce.Status != http.StatusBadRequest {
			t.Errorf("GET %s: %v; want 400", path, err)
		}
	}
	var ce *control.CallError
	if err := s.call(http.MethodGet, "/v1/jobs/999", nil, &j); !errors.As(err, &ce) || ce.Status != http.StatusNotFound {
		t.Errorf("GET /v1/jobs/999: %v; want 404", err)
	}
}

// Progress within one phase is stored at most once per interval.
func TestJobProgressIsThrottled(t *testing.T) {
	s := newSite(t)
	rec := s.srv.JobRecorder()
	id := rec.JobStarted(failover.JobFailback, "web01/db", "admin")
	rec.JobProgress(id, "copying: 1 of 10", 10)
	rec.JobProgress(id, "copying: 2 of 10", 20) // same phase, same instant: dropped
	j, err := s.srv.Store.Job(id)
	if err != nil {
		t.Fatal(err)
	}
	if j.Step != "copying: 1 of 10" {
		t.Fatalf("step %q; want the first (the second came too soon)", j.Step)
	}
	s.clock.Add(control.DefaultJobProgressInterval)
	rec.JobProgress(id, "copying: 3 of 10", 30)
	if j, _ = s.srv.Store.Job(id); j.Step != "copying: 3 of 10" || *j.Progress != 30 {
		t.Fatalf("step %q %v; want the one an interval later", j.Step, *j.Progress)
	}
}

// A job running when the store closes (the server stopped or crashed) is
// failed when it opens again, with an error that says so.
func TestRunningJobFailsAtRestart(t *testing.T) {
	dir := t.TempDir()
	st, err := control.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 4, 8, 0, 0, 0, time.UTC)
	running, err := st.StartJob(control.Job{Kind: failover.JobReprotect, Volume: "web01/db"}, now)
	if err != nil {
		t.Fatal(err)
	}
	done, _ := st.StartJob(control.Job{Kind: failover.JobCommit, Volume: "web01/db"}, now)
	if _, err := st.FinishJob(done.ID, "", nil, now); err != nil {
		t.Fatal(err)
	}
	st.Close()

	st, err = control.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	j, err := st.Job(running.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != control.JobFailed || j.Ended == nil || !strings.Contains(j.Error, "stopped while it ran") {
		t.Fatalf("job running at the stop: %+v; want failed with the reason", j)
	}
	if j, _ = st.Job(done.ID); j.State != control.JobSucceeded {
		t.Fatalf("finished job: %+v; want it unchanged", j)
	}
	next, _ := st.StartJob(control.Job{Kind: failover.JobFailback}, now)
	if next.ID <= done.ID {
		t.Fatalf("new job id %d after %d; ids must keep growing", next.ID, done.ID)
	}
}

// The store keeps the newest jobs only (10000; 50 here).
func TestOldJobsArePruned(t *testing.T) {
	const max = 50
	defer control.SetMaxJobsForTest(max)()
	st, err := control.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	var last control.Job
	for range max + 3 {
		if last, err = st.StartJob(control.Job{Kind: failover.JobCommit, Volume: "web01/db"}, now); err != nil {
			t.Fatal(err)
		}
	}
	all, err := st.Jobs(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != max || all[0].ID != last.ID || all[len(all)-1].ID != last.ID-max+1 {
		t.Fatalf("%d jobs kept, ids %d..%d; want the newest %d, up to %d", len(all), all[len(all)-1].ID, all[0].ID, max, last.ID)
	}
	if _, err := st.Job(1); !errors.Is(err, control.ErrNotFound) {
		t.Fatalf("the oldest job: %v; want not found", err)
	}
}
