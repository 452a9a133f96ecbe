package main

import (
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/failover"
	"lifeboat/pipeline"
	"lifeboat/targets"
)

// goldenJob is a failover that succeeded after two steps.
func goldenJob() control.Job {
	ended := goldenTime.Add(12 * time.Second)
	half, hundred := 50.0, 100.0
	return control.Job{ID: 17, Kind: failover.JobFailover, Volume: "web01/db", RequestedBy: "admin", State: control.JobSucceeded,
		Step: "opening the failover volume", Progress: &hundred, Started: goldenTime, Ended: &ended,
		Steps: []control.JobStep{
			{At: goldenTime.Add(time.Second), Step: "applying what the site has spooled before taking the latest point: 4.0 MiB left", Progress: &half},
			{At: goldenTime.Add(9 * time.Second), Step: "opening the failover volume"},
		},
		Result: &pipeline.RecoveryState{Volume: targets.VolumeInfo{ID: "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab", Name: "db", Machine: "web01", Size: 1 << 30, BlockSize: 4096}, Kind: pipeline.RecoveryFailover,
			Point: pipeline.Point{Seq: 4711, Generation: 1, Kind: "crash", Name: "crash-000042", Time: goldenTime},
			Since: goldenTime, Export: "web01.db.failover", URL: "nbd://127.0.0.1:10810/web01.db.failover"}}
}

func TestGoldenJobs(t *testing.T) {
	failed := goldenTime.Add(time.Minute)
	jobs := []control.Job{
		{ID: 18, Kind: failover.JobFailback, Volume: "web01/db", RequestedBy: "admin", State: control.JobFailed,
			Started: failed, Ended: &failed, Error: "volume web01/db is not failed over; there is nothing to fail back"},
		goldenJob(),
		full[control.Job](t, "job"),
	}
	dir, url := controlAPI(t, "/v1/jobs", jobs)
	golden(t, "jobs.json", runJSON(t, "jobs", "--data-dir", dir, "--server", url, "--output", "json"))
}

func TestGoldenJobShow(t *testing.T) {
	dir, url := controlAPI(t, "/v1/jobs/17", goldenJob())
	golden(t, "job_show.json", runJSON(t, "job", "show", "17", "--data-dir", dir, "--server", url, "--output", "json"))
	dir, url = controlAPI(t, "/v1/jobs/17", full[control.Job](t, "job"))
	golden(t, "job_show_full.json", runJSON(t, "job", "show", "17", "--follow", "--data-dir", dir, "--server", url, "--output", "json"))
}
