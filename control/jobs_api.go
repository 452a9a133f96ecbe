package control

import (
	"fmt"
	"net/http"
	"strconv"
)

// DefaultJobsLimit is how many jobs GET /v1/jobs lists without ?limit=.
const DefaultJobsLimit = 100

// GET /v1/jobs[?limit=N]: the newest jobs first (limit 0: all).
func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request, peer string) {
	limit := DefaultJobsLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			s.answer(w, r, peer, nil, fmt.Errorf("%w: limit %q: want a number of jobs, 0 for all", ErrInvalid, v))
			return
		}
		limit = n
	}
	jobs, err := s.Store.Jobs(limit)
	s.answer(w, r, peer, jobs, err)
}

// GET /v1/jobs/{id}: one job.
func (s *Server) handleJob(w http.ResponseWriter, r *http.Request, peer string) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		s.answer(w, r, peer, nil, fmt.Errorf("%w: job id %q: want a number (lifeboat jobs lists them)", ErrInvalid, r.PathValue("id")))
		return
	}
	j, err := s.Store.Job(id)
	s.answer(w, r, peer, j, err)
}
