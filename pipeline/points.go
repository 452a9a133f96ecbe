package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// Status returns the progress of every volume p may see (every volume for
// an admin, its own machine's for an agent), failed ones included, sorted
// by machine and name.
func (s *Server) status(p peer) []VolumeStatus {
	s.mu.Lock()
	vols := make([]*volume, 0, len(s.vols))
	for _, v := range s.vols {
		vols = append(vols, v)
	}
	out := []VolumeStatus{} // [] rather than null in JSON
	for _, f := range s.failed {
		if p.sees(f.info) {
			out = append(out, VolumeStatus{Info: f.info, Failed: f.err.Error()})
		}
	}
	s.mu.Unlock()
	for _, v := range vols {
		st := v.status()
		if !p.sees(st.Info) {
			continue
		}
		s.addPoints(v, &st)
		p.trim(&st)
		out = append(out, st)
	}
	sortStatus(out)
	return out
}

// Status returns every volume's progress, as an admin sees it.
func (s *Server) Status() []VolumeStatus { return s.status(peer{role: pki.RoleAdmin}) }

func (s *Server) handleVolumes(w http.ResponseWriter, r *http.Request) {
	p, err := peerOf(r)
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.status(p))
}

// addPoints adds the point count, the newest point and the recovery
// volumes to st.
func (s *Server) addPoints(v *volume, st *VolumeStatus) {
	if s.Holds != nil {
		st.Recovery = s.Holds.Recovery(v.info.ID)
		st.PlannedFailover = s.Holds.PlannedFailover(v.info.ID)
		st.RecoveryStep = s.Holds.Step(v.info.ID)
	}
	points, err := v.rep.Points(s.ctx)
	if err != nil {
		return
	}
	st.Points = len(points)
	if len(points) > 0 {
		p := APIPoint(points[len(points)-1])
		st.LatestPoint = &p
	}
}

// lookup answers the request with an error and returns nil unless its
// caller may reach the volume the path names (and, with admin, is an
// admin).
func (s *Server) lookup(w http.ResponseWriter, r *http.Request, admin bool) (*volume, peer) {
	p, err := peerOf(r)
	if err == nil && admin && !p.admin() {
		err = fmt.Errorf("%w: this needs an admin client certificate (lifeboat certs issue --role admin); %s is an %s",
			ErrForbidden, p.name, p.role)
	}
	var v *volume
	if err == nil {
		v, err = s.resolve(r.Context(), p, r.PathValue("id"))
	}
	if err != nil {
		s.refuse(w, r, err)
		return nil, p
	}
	return v, p
}

// refuse answers err with its status code and logs it; refusals of
// another machine's volume at WARN, with who asked.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	code := statusCode(err)
	if code != http.StatusNotFound { // a volume's first contact is no error
		s.errs.addErr(err)
	}
	log := s.logger().With("method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	if r.TLS != nil {
		if name, role, perr := pki.Peer(*r.TLS); perr == nil {
			log = log.With("peer", name, "role", role)
		}
	}
	switch code {
	case http.StatusNotFound: // a volume's first contact, a typo
		log.Debug("request refused")
	case http.StatusBadRequest:
		log.Info("request refused")
	default:
		log.Warn("request refused")
	}
	httpError(w, code, err)
}

func (s *Server) handleVolume(w http.ResponseWriter, r *http.Request) {
	v, p := s.lookup(w, r, false)
	if v == nil {
		return
	}
	st := v.status()
	s.addPoints(v, &st)
	p.trim(&st)
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handlePoints(w http.ResponseWriter, r *http.Request) {
	v, _ := s.lookup(w, r, true)
	if v == nil {
		return
	}
	points, err := v.rep.Points(r.Context())
	if err != nil {
		httpError(w, http.StatusInternalServerError, err)
		return
	}
	out := make([]Point, len(points))
	for i, p := range points {
		out[i] = APIPoint(p)
	}
	writeJSON(w, http.StatusOK, out)
}

// handleMachine moves a volume to another machine (an admin's decision
// for a rebuilt or renamed machine): from then on only that machine's
// agent may send its segments.
func (s *Server) handleMachine(w http.ResponseWriter, r *http.Request) {
	v, p := s.lookup(w, r, true)
	if v == nil {
		return
	}
	var req MachineRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("body: want {\"machine\": NAME}: %v", err))
		return
	}
	if err := pki.CheckName(req.Machine); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("machine: %w", err))
		return
	}
	from := v.infoNow().Machine
	if err := s.nameFree(r.Context(), v, req.Machine); err != nil {
		s.refuse(w, r, err)
		return
	}
	if from != req.Machine {
		// Under recvMu: a segment being received finishes under the old
		// owner, the next one is checked against the new.
		v.recvMu.Lock()
		err := s.setMachine(r.Context(), v, req.Machine)
		v.recvMu.Unlock()
		if err != nil {
			s.refuse(w, r, err)
			return
		}
		s.logger().Warn("volume moved to another machine by an admin", "volume", v.info.Name, "id", v.info.ID,
			"from", from, "to", req.Machine, "admin", p.name)
	}
	st := v.status()
	s.addPoints(v, &st)
	writeJSON(w, http.StatusOK, st)
}

// nameFree refuses to move v to a machine that has a volume of the same
// name already: MACHINE/NAME would no longer name one volume.
func (s *Server) nameFree(ctx context.Context, v *volume, machine string) error {
	all, err := s.allVolumes(ctx)
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.ID != v.info.ID && o.Machine == machine && o.Name == v.info.Name {
			return fmt.Errorf("%w: machine %s already has a volume %s (id %s); move or remove that one first",
				ErrAmbiguous, machine, o.Name, o.ID)
		}
	}
	return nil
}

// handlePointImage serves a point's image; "latest" names the newest. The
// body is exactly the point's size (X-Lifeboat-Point-Size) or the
// connection is aborted: a read error never ends it early and quietly.
func (s *Server) handlePointImage(w http.ResponseWriter, r *http.Request) {
	v, _ := s.lookup(w, r, true)
	if v == nil {
		return
	}
	seq, err := s.pointSeq(r, v)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, targets.ErrNotFound) {
			code = http.StatusNotFound
		}
		httpError(w, code, err)
		return
	}
	pr, err := v.rep.OpenPoint(r.Context(), seq)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, targets.ErrNotFound) {
			code = http.StatusNotFound
		}
		httpError(w, code, err)
		return
	}
	defer pr.Close()
	p := pr.Point()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(hdrPointSeq, strconv.FormatUint(p.Seq, 10))
	w.Header().Set(hdrPointName, p.Name)
	w.Header().Set(hdrPointSize, strconv.FormatInt(pr.Size(), 10))
	body := newChunkedReader(pr, pr.Size())
	http.ServeContent(w, r, "", p.Time, body)
	if body.err != nil && r.Context().Err() == nil {
		s.logger().Error("point download aborted: reading the point failed", "volume", v.info.Name, "seq", p.Seq, "err", body.err)
		panic(http.ErrAbortHandler) // the client sees a broken download, never a short one
	}
}

func (s *Server) pointSeq(r *http.Request, v *volume) (uint64, error) {
	arg := r.PathValue("seq")
	if arg != "latest" {
		seq, err := strconv.ParseUint(arg, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("point %q: want a seq or \"latest\"", arg)
		}
		return seq, nil
	}
	points, err := v.rep.Points(r.Context())
	if err != nil {
		return 0, err
	}
	if len(points) == 0 {
		return 0, fmt.Errorf("%w: volume %s has no recovery point yet", targets.ErrNotFound, v.info.Name)
	}
	return points[len(points)-1].Seq, nil
}
