package control

import (
	"log/slog"
	"sync"
	"time"

	"lifeboat/pipeline"
)

// JobRecorder records the site's recovery requests as jobs in Store (it is
// the failover.Manager's Jobs). Progress is written when a step starts a
// new phase, and otherwise at most once per ProgressInterval, so that a
// copy reporting every chunk does not sync the store every chunk.
type JobRecorder struct {
	Store  *Store
	Logger *slog.Logger
	Now    func() time.Time
	// ProgressInterval defaults to DefaultJobProgressInterval.
	ProgressInterval time.Duration

	mu   sync.Mutex
	last map[uint64]written // running jobs: their last stored step
}

// DefaultJobProgressInterval is how often a job's progress within one
// phase is stored.
const DefaultJobProgressInterval = time.Second

type written struct {
	at   time.Time
	step string
}

// JobRecorder returns a recorder of jobs in s's store, with its clock and
// logger.
func (s *Server) JobRecorder() *JobRecorder {
	return &JobRecorder{Store: s.Store, Logger: s.Logger, Now: s.Now}
}

func (r *JobRecorder) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *JobRecorder) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

// JobStarted implements failover.JobRecorder.
func (r *JobRecorder) JobStarted(kind, volume, by string) uint64 {
	j, err := r.Store.StartJob(Job{Kind: kind, Volume: volume, RequestedBy: by}, r.now())
	if err != nil {
		r.log().Error("a recovery request runs without a job: the store refused it", "kind", kind, "volume", volume, "err", err)
		return 0
	}
	r.log().Info("job started", "job", j.ID, "kind", kind, "volume", volume, "by", by)
	return j.ID
}

// JobProgress implements failover.JobRecorder.
func (r *JobRecorder) JobProgress(id uint64, step string, percent float64) {
	if id == 0 {
		return
	}
	now := r.now()
	every := r.ProgressInterval
	if every <= 0 {
		every = DefaultJobProgressInterval
	}
	r.mu.Lock()
	if r.last == nil {
		r.last = map[uint64]written{}
	}
	w, ok := r.last[id]
	if ok && samePhase(w.step, step) && now.Sub(w.at) < every {
		r.mu.Unlock()
		return
	}
	r.last[id] = written{at: now, step: step}
	r.mu.Unlock()
	var pct *float64
	if percent >= 0 {
		p := min(percent, 100)
		pct = &p
	}
	if err := r.Store.UpdateJob(id, step, pct, now); err != nil {
		r.log().Warn("job progress not stored", "job", id, "err", err)
	}
}

// JobFinished implements failover.JobRecorder.
func (r *JobRecorder) JobFinished(id uint64, err error, result *pipeline.RecoveryState) {
	if id == 0 {
		return
	}
	r.mu.Lock()
	delete(r.last, id)
	r.mu.Unlock()
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	j, serr := r.Store.FinishJob(id, msg, result, r.now())
	if serr != nil {
		r.log().Error("job end not stored", "job", id, "err", serr)
		return
	}
	r.log().Info("job ended", "job", id, "kind", j.Kind, "volume", j.Volume, "state", j.State, "err", j.Error)
}
