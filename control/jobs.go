package control

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"lifeboat/pipeline"
)

// JobState is where a job is.
type JobState string

// Job states. A job is running until it ends, once.
const (
	JobRunning   JobState = "running"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
)

// jobInterrupted is the error of a job that was running when its
// server stopped.
const jobInterrupted = "the server stopped while it ran; look at the volume's state (lifeboat test-failover list) and run the command again if needed"

// maxJobSteps bounds a job's step history.
const maxJobSteps = 32

// maxJobs is how many jobs the store keeps: starting one more deletes the
// oldest.
var maxJobs uint64 = 10000

// Job is one recovery request (test failover, failover, reprotect,
// failback...) as the site ran it: what was asked, its steps, how it ended.
type Job struct {
	ID          uint64    `json:"id"`
	Kind        string    `json:"kind"`   // test-failover, test-failover-cleanup, failover, change-point, commit, reprotect, failback
	Volume      string    `json:"volume"` // MACHINE/NAME
	RequestedBy string    `json:"requested_by"`
	State       JobState  `json:"state"`
	Step        string    `json:"step,omitempty"`     // what it does now (running) or did last
	Progress    *float64  `json:"progress,omitempty"` // percent of the step, or 100 when it succeeded
	Steps       []JobStep `json:"steps,omitempty"`    // its phases, the latest text of each (the newest 32)
	Started     time.Time `json:"started"`
	// Ended is set once the job is no longer running.
	Ended  *time.Time              `json:"ended,omitempty"`
	Error  string                  `json:"error,omitempty"`
	Result *pipeline.RecoveryState `json:"result,omitempty"` // the recovery volume it left, on success
}

// JobStep is a phase of a job.
type JobStep struct {
	At       time.Time `json:"at"`
	Step     string    `json:"step"`
	Progress *float64  `json:"progress,omitempty"`
}

// StartJob stores a running job (Kind, Volume, RequestedBy from j) started
// at now and returns it with its id.
func (s *Store) StartJob(j Job, now time.Time) (Job, error) {
	err := s.update(func(tx *bolt.Tx) error {
		id, err := tx.Bucket(bucketJobs).NextSequence()
		if err != nil {
			return err
		}
		j.ID, j.State, j.Started, j.Ended = id, JobRunning, now.UTC(), nil
		if err := putJob(tx, j); err != nil {
			return err
		}
		return pruneJobs(tx, id)
	})
	return j, err
}

// pruneJobs deletes the oldest jobs until maxJobs are left; newest is the
// highest id (ids are consecutive, so the count is known from the first).
func pruneJobs(tx *bolt.Tx, newest uint64) error {
	c := tx.Bucket(bucketJobs).Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k)+maxJobs <= newest; k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// UpdateJob records a running job's step and its percent (nil: unknown).
// A step of the same phase as the last one (the same text but for its
// numbers) replaces it in the history; a new phase is appended.
func (s *Store) UpdateJob(id uint64, step string, pct *float64, now time.Time) error {
	return s.update(func(tx *bolt.Tx) error {
		j, err := getJob(tx, id)
		if err != nil || j.State != JobRunning {
			return err
		}
		j.Step, j.Progress = step, pct
		st := JobStep{At: now.UTC(), Step: step, Progress: pct}
		if n := len(j.Steps); n > 0 && samePhase(j.Steps[n-1].Step, step) {
			j.Steps[n-1] = st
		} else {
			j.Steps = append(j.Steps, st)
			if len(j.Steps) > maxJobSteps {
				j.Steps = j.Steps[len(j.Steps)-maxJobSteps:]
			}
		}
		return putJob(tx, j)
	})
}

// FinishJob ends a running job: failed with errMsg when it is not "",
// otherwise succeeded with result (and progress 100). A job that already
// ended is left as it is.
func (s *Store) FinishJob(id uint64, errMsg string, result *pipeline.RecoveryState, now time.Time) (Job, error) {
	var j Job
	err := s.update(func(tx *bolt.Tx) (err error) {
		if j, err = getJob(tx, id); err != nil || j.State != JobRunning {
			return err
		}
		endJob(&j, errMsg, now)
		j.Result = result
		return putJob(tx, j)
	})
	return j, err
}

// endJob marks j ended at now: failed with errMsg, or succeeded.
func endJob(j *Job, errMsg string, now time.Time) {
	t := now.UTC()
	j.Ended = &t
	if errMsg != "" {
		j.State, j.Error = JobFailed, errMsg
		return
	}
	hundred := 100.0
	j.State, j.Progress = JobSucceeded, &hundred
}

// Jobs lists the newest limit jobs (limit <= 0: all), newest first.
func (s *Store) Jobs(limit int) ([]Job, error) {
	out := []Job{}
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJobs).Cursor()
		for k, v := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return err
			}
			out = append(out, j)
		}
		return nil
	})
	return out, err
}

// Job returns job id.
func (s *Store) Job(id uint64) (Job, error) {
	var j Job
	err := s.view(func(tx *bolt.Tx) (err error) { j, err = getJob(tx, id); return })
	return j, err
}

// failInterrupted marks every running job failed: called when the store
// opens, when no request of this process can be running yet.
func failInterrupted(tx *bolt.Tx, now time.Time) error {
	b := tx.Bucket(bucketJobs)
	var stale []Job
	err := b.ForEach(func(_, v []byte) error {
		var j Job
		if err := json.Unmarshal(v, &j); err != nil {
			return err
		}
		if j.State == JobRunning {
			stale = append(stale, j)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, j := range stale {
		endJob(&j, jobInterrupted, now)
		if err := putJob(tx, j); err != nil {
			return err
		}
	}
	return nil
}

func getJob(tx *bolt.Tx, id uint64) (Job, error) {
	var j Job
	v := tx.Bucket(bucketJobs).Get(seqKey(id))
	if v == nil {
		return j, fmt.Errorf("job %d: %w", id, ErrNotFound)
	}
	return j, json.Unmarshal(v, &j)
}

func putJob(tx *bolt.Tx, j Job) error {
	v, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketJobs).Put(seqKey(j.ID), v)
}

// samePhase reports whether two steps differ only in their numbers
// ("3.0 MiB left" and "1.5 MiB left").
func samePhase(a, b string) bool {
	return stripDigits(a) == stripDigits(b)
}

func stripDigits(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < '0' || c > '9' {
			out = append(out, c)
		}
	}
	return string(out)
}
