package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"lifeboat/control"
)

// job show --follow polls until the job ends, printing a plain line per
// step without a terminal, and exits 1 when the job failed.
func TestJobShowFollow(t *testing.T) {
	for _, tc := range []struct {
		end      control.JobState
		wantCode int
	}{{control.JobSucceeded, 0}, {control.JobFailed, 1}} {
		t.Run(string(tc.end), func(t *testing.T) {
			var calls atomic.Int32
			dir, srv := siteAPI(t, func(w http.ResponseWriter, r *http.Request) {
				j := goldenJob()
				n := calls.Add(1)
				switch {
				case n == 1:
					pct := 25.0
					j.State, j.Step, j.Progress, j.Ended, j.Result = control.JobRunning, "applying: 3.0 MiB left", &pct, nil, nil
				case tc.end == control.JobFailed:
					j.State, j.Error, j.Result = control.JobFailed, "the agent did not answer", nil
				}
				json.NewEncoder(w).Encode(j)
			})
			stdout, stderr, code := runApp(t, "job", "show", "17", "--follow", "--data-dir", dir, "--server", srv.URL)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\n%s", code, tc.wantCode, stderr)
			}
			if !strings.Contains(stderr, "job 17 failover web01/db: 25% applying: 3.0 MiB left") {
				t.Errorf("stderr lacks the running step's line:\n%s", stderr)
			}
			if !strings.Contains(stdout, "job 17: failover of web01/db, "+string(tc.end)) {
				t.Errorf("stdout lacks the job's end:\n%s", stdout)
			}
			if tc.end == control.JobFailed && !strings.Contains(stderr, "the agent did not answer") {
				t.Errorf("stderr lacks the job's error:\n%s", stderr)
			}
		})
	}
}

// jobs prints a table, and refuses a negative --limit with exit 2.
func TestJobsTable(t *testing.T) {
	dir, url := controlAPI(t, "/v1/jobs", []control.Job{goldenJob()})
	stdout, stderr, code := runApp(t, "jobs", "--data-dir", dir, "--server", url)
	if code != 0 || !strings.Contains(stdout, "17  failover  web01/db  succeeded") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if _, _, code := runApp(t, "jobs", "--limit", "-1", "--data-dir", dir, "--server", url); code != 2 {
		t.Errorf("--limit -1: exit %d, want 2", code)
	}
}
