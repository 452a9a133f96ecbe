package pipeline

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"

	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// Status returns every volume's progress, sorted by name.
func (s *Server) Status() []VolumeStatus {
	s.mu.Lock()
	vols := make([]*volume, 0, len(s.vols))
	for _, v := range s.vols {
		vols = append(vols, v)
	}
	s.mu.Unlock()
	out := make([]VolumeStatus, 0, len(vols))
	for _, v := range vols {
		st := v.status()
		s.addPoints(v, &st)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info.Name < out[j].Info.Name })
	return out
}

func (s *Server) handleVolumes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Status())
}

// addPoints adds the point count and the newest point to st.
func (s *Server) addPoints(v *volume, st *VolumeStatus) {
	points, err := v.rep.Points(s.ctx)
	if err != nil {
		return
	}
	st.Points = len(points)
	if len(points) > 0 {
		p := apiPoint(points[len(points)-1])
		st.LatestPoint = &p
	}
}

// lookup finds a volume by id or by name.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) *volume {
	key := r.PathValue("id")
	if v := s.volume(key); v != nil {
		return v
	}
	s.mu.Lock()
	for _, v := range s.vols {
		if v.info.Name == key {
			s.mu.Unlock()
			return v
		}
	}
	s.mu.Unlock()
	v, err := s.adopt(r, key)
	if err != nil {
		s.logger().Warn("volume refused", "volume", key, "err", err)
	}
	switch {
	case errors.Is(err, targets.ErrInUse):
		httpError(w, http.StatusLocked, err)
	case err != nil:
		httpError(w, http.StatusInternalServerError, err)
	case v == nil:
		httpError(w, http.StatusNotFound, fmt.Errorf("%w: %q", ErrNoReplica, key))
	}
	return v
}

// adopt opens the replica the target already holds for a volume this
// server has not seen: a process server rebuilt, or added, on the same
// target. Its agent then resumes from the replica's committed state instead
// of copying the whole volume again. key is the volume id, or a name only
// one replica has; nil, nil when the target has no such replica.
func (s *Server) adopt(r *http.Request, key string) (*volume, error) {
	vols, err := s.Target.Volumes(r.Context())
	if err != nil {
		return nil, fmt.Errorf("look for volume %q in the target: %w", key, err)
	}
	var found []targets.VolumeInfo
	for _, info := range vols {
		if info.ID == key {
			found = []targets.VolumeInfo{info}
			break
		}
		if info.Name == key {
			found = append(found, info)
		}
	}
	if len(found) != 1 {
		return nil, nil
	}
	s.logger().Info("volume found in the target; opening its replica", "volume", found[0].Name, "id", found[0].ID)
	return s.volumeFor(r, found[0])
}

func (s *Server) handleVolume(w http.ResponseWriter, r *http.Request) {
	v := s.lookup(w, r)
	if v == nil {
		return
	}
	st := v.status()
	s.addPoints(v, &st)
	writeJSON(w, http.StatusOK, st)
}

// admin refuses a request whose client certificate is not an admin's.
func admin(w http.ResponseWriter, r *http.Request) bool {
	if r.TLS == nil {
		httpError(w, http.StatusForbidden, errors.New("recovery points need an admin client certificate"))
		return false
	}
	_, role, err := pki.Peer(*r.TLS)
	if err != nil || role != pki.RoleAdmin {
		httpError(w, http.StatusForbidden, errors.New("recovery points need an admin client certificate (lifeboat certs issue --role admin)"))
		return false
	}
	return true
}

func (s *Server) handlePoints(w http.ResponseWriter, r *http.Request) {
	if !admin(w, r) {
		return
	}
	v := s.lookup(w, r)
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
		out[i] = apiPoint(p)
	}
	writeJSON(w, http.StatusOK, out)
}

// handlePointImage serves a point's image; "latest" names the newest.
func (s *Server) handlePointImage(w http.ResponseWriter, r *http.Request) {
	if !admin(w, r) {
		return
	}
	v := s.lookup(w, r)
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
	w.Header().Set(headerPrefix+"Point-Seq", strconv.FormatUint(p.Seq, 10))
	w.Header().Set(headerPrefix+"Point-Name", p.Name)
	http.ServeContent(w, r, "", p.Time, newChunkedReader(pr, pr.Size()))
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
