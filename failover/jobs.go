package failover

import (
	"context"
	"net/http"
	"strconv"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// Kinds of the jobs the recovery API records, one per request.
const (
	JobTestFailover        = "test-failover"
	JobTestFailoverCleanup = "test-failover-cleanup"
	JobFailover            = "failover"
	JobChangePoint         = "change-point"
	JobCommit              = "commit"
	JobReprotect           = "reprotect"
	JobFailback            = "failback"
)

// JobHeader is the response header of a recovery request that names the
// job it ran as (a decimal id), on success and on failure.
const JobHeader = "Lifeboat-Job"

// JobRecorder records each recovery request of the API as a job (the
// configuration server's store implements it). Its methods must be safe
// for concurrent use and must not block for long: they run inside the
// request. A recorder that cannot store a job logs that and returns 0
// from JobStarted; the request goes on without a job, and the other two
// methods ignore id 0.
type JobRecorder interface {
	// JobStarted records a running job of kind on volume (MACHINE/NAME),
	// asked for by the certificate name by, and returns its id.
	JobStarted(kind, volume, by string) uint64
	// JobProgress records what the job does now; percent is 0-100, or
	// negative when the step has no measure. It may drop updates that
	// come too often.
	JobProgress(id uint64, step string, percent float64)
	// JobFinished records the end: err nil is success with result (the
	// recovery volume's state), otherwise a failure with err's message.
	JobFinished(id uint64, err error, result *pipeline.RecoveryState)
}

type jobKey struct{}

// withJob carries a job id to the request's begin.
func withJob(ctx context.Context, id uint64) context.Context {
	return context.WithValue(ctx, jobKey{}, id)
}

func jobOf(ctx context.Context) uint64 {
	id, _ := ctx.Value(jobKey{}).(uint64)
	return id
}

// startJob records a job for request r on sv (none without m.Jobs), names
// it in the response header and returns the context that carries it.
func (m *Manager) startJob(w http.ResponseWriter, r *http.Request, kind string, sv pipeline.SiteVolume) (context.Context, uint64) {
	if m.Jobs == nil {
		return r.Context(), 0
	}
	by := ""
	if r.TLS != nil {
		by, _, _ = pki.Peer(*r.TLS)
	}
	id := m.Jobs.JobStarted(kind, volName(sv.Info()), by)
	if id == 0 {
		return r.Context(), 0
	}
	w.Header().Set(JobHeader, strconv.FormatUint(id, 10))
	return withJob(r.Context(), id), id
}

// finishJob records the end of job id (0: none).
func (m *Manager) finishJob(id uint64, err error, st pipeline.RecoveryState) {
	if id == 0 || m.Jobs == nil {
		return
	}
	if err != nil {
		m.Jobs.JobFinished(id, err, nil)
		return
	}
	m.Jobs.JobFinished(id, nil, &st)
}
