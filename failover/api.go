package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"lifeboat/pipeline"
)

// The recovery API, served by the process server (admin certificates
// only; anything else is 403 and logged):
//
//	GET    /v1/recovery                          every recovery volume ([]pipeline.RecoveryState)
//	POST   /v1/volumes/{id}/test-failover        Request: start a test failover
//	DELETE /v1/volumes/{id}/test-failover        clean it up
//	POST   /v1/volumes/{id}/failover             Request: fail over (Planned: with the agent's help)
//	POST   /v1/volumes/{id}/failover/point       Request: change the point (Force drops writes)
//	POST   /v1/volumes/{id}/failover/commit      commit the failover
//	POST   /v1/volumes/{id}/reprotect            Request (To, Verify, Full, Force): reverse replication to a master target
//	POST   /v1/volumes/{id}/failback             Request (NoWait): switch back to the primary volume
//
// Each answers the recovery volume's state; an error is {"error": ...}
// with 400 (bad request), 404 (no such volume or point), 409 (the volume's
// state does not allow it) or 403. Each request on a known volume is a job
// (Manager.Jobs), named in the answer's Lifeboat-Job header.

// Register adds the recovery API to the process server's handler and makes
// the manager its Holds. Call it before the server's Open.
func (m *Manager) Register() {
	s := m.Site
	s.Holds = m
	s.Handle("GET /v1/recovery", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Admin(w, r) {
			writeJSON(w, m.List())
		}
	}))
	s.Handle("POST /v1/volumes/{id}/test-failover", m.handler(JobTestFailover, true, func(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
		return m.StartTest(ctx, sv, req, m.progress(sv))
	}))
	s.Handle("DELETE /v1/volumes/{id}/test-failover", m.handler(JobTestFailoverCleanup, false, func(ctx context.Context, sv pipeline.SiteVolume, _ Request) (pipeline.RecoveryState, error) {
		return m.Cleanup(ctx, sv)
	}))
	s.Handle("POST /v1/volumes/{id}/failover", m.handler(JobFailover, true, func(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
		return m.StartFailover(ctx, sv, req, m.progress(sv))
	}))
	s.Handle("POST /v1/volumes/{id}/failover/point", m.handler(JobChangePoint, true, func(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
		return m.ChangePoint(ctx, sv, req, m.progress(sv))
	}))
	s.Handle("POST /v1/volumes/{id}/reprotect", m.handler(JobReprotect, true, func(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
		return m.Reprotect(ctx, sv, req)
	}))
	s.Handle("POST /v1/volumes/{id}/failback", m.handler(JobFailback, true, func(ctx context.Context, sv pipeline.SiteVolume, req Request) (pipeline.RecoveryState, error) {
		return m.Failback(ctx, sv, req)
	}))
	s.Handle("POST /v1/volumes/{id}/failover/commit", m.handler(JobCommit, false, func(ctx context.Context, sv pipeline.SiteVolume, _ Request) (pipeline.RecoveryState, error) {
		return m.Commit(ctx, sv)
	}))
}

// handler checks the caller (an admin), resolves {id}, records a job of
// kind, decodes the body when withBody, calls fn, answers and records the
// job's end.
func (m *Manager) handler(kind string, withBody bool, fn func(context.Context, pipeline.SiteVolume, Request) (pipeline.RecoveryState, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sv, ok := m.Site.AdminVolume(w, r)
		if !ok {
			return
		}
		ctx, job := m.startJob(w, r, kind, sv)
		var req Request
		if withBody {
			dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req); err != nil && err != io.EOF {
				err = fmt.Errorf("%w: request body: %v", pipeline.ErrPermanent, err)
				m.finishJob(job, err, pipeline.RecoveryState{})
				m.Site.Refuse(w, r, err)
				return
			}
		}
		st, err := fn(ctx, sv, req)
		m.finishJob(job, err, st)
		if err != nil {
			m.Site.Refuse(w, r, err)
			return
		}
		writeJSON(w, st)
	})
}

// progress shows how much of the spool is left to apply (Step, logged),
// as a percentage of the most that was left.
func (m *Manager) progress(sv pipeline.SiteVolume) func(int64) {
	var most int64
	return func(left int64) {
		most = max(most, left)
		m.stepPct(sv.Info(), 100*float64(most-left)/float64(max(most, 1)),
			"applying what the site has spooled before taking the latest point: %s left", mib(left))
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
