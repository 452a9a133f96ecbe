package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/google/uuid"

	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// Who may reach what.
//
// A volume belongs to a machine: the name (CN) of the agent certificate
// whose first segment created its replica on the site, recorded with the
// replica on the target (targets.VolumeInfo.Machine), or the machine an
// admin moved it to (POST /v1/volumes/{id}/machine). Nothing moves a volume
// implicitly; a replica made before machines were recorded belongs to the
// first agent that sends it a segment, which is logged.
//
// An agent certificate sends segments for, and reads the status of, its
// own machine's volumes only: another machine's volume is 403 with both
// names and what to do, and the refusal is logged. An admin certificate
// reads every volume and its points and moves volumes; it sends no
// segments.

// peer is who sent a request, from its verified client certificate.
type peer struct {
	name string
	role pki.Role
}

func (p peer) admin() bool { return p.role == pki.RoleAdmin }

func peerOf(r *http.Request) (peer, error) {
	if r.TLS == nil {
		return peer{}, fmt.Errorf("%w: the request has no client certificate", ErrForbidden)
	}
	name, role, err := pki.Peer(*r.TLS)
	if err != nil {
		return peer{}, fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	if role != pki.RoleAgent && role != pki.RoleAdmin {
		// A process server's client certificate is for its heartbeats to
		// the configuration server, nothing here.
		return peer{}, fmt.Errorf("%w: %s has a certificate of role %s; only agents and admins use this port", ErrForbidden, name, role)
	}
	return peer{name: name, role: role}, nil
}

// mayReach refuses p a volume of another machine.
func (p peer) mayReach(info targets.VolumeInfo) error {
	if p.admin() || info.Machine == "" || info.Machine == p.name {
		return nil
	}
	return fmt.Errorf("%w: volume %s (id %s) belongs to machine %s, and this agent's certificate is %s. "+
		"If %s replaced %s (a rebuilt or renamed machine), an admin moves the volume with "+
		"'lifeboat volume reassign %s/%s --to %s'; if this machine is a copy of %s (a cloned VM, a copied journal "+
		"directory), give its agent a new --journal-dir so that its volumes get new ids",
		ErrForbidden, info.Name, info.ID, info.Machine, p.name, p.name, info.Machine, info.Machine, info.Name, p.name, info.Machine)
}

// sees reports whether p lists info among its volumes: an admin every
// volume, an agent its own machine's (not a replica that has no machine
// yet, although it may claim one).
func (p peer) sees(info targets.VolumeInfo) bool {
	return p.admin() || info.Machine != "" && info.Machine == p.name
}

// trim removes from st what only an admin needs: where the site serves
// the volume's recovery volumes (an agent needs their state only).
func (p peer) trim(st *VolumeStatus) {
	if p.admin() {
		return
	}
	for i := range st.Recovery {
		r := &st.Recovery[i]
		r.Export, r.URL, r.File, r.AzureDisk = "", "", "", ""
	}
}

// known returns what the site knows of volume id that is not open: a
// volume whose replica failed to open, or a replica the target holds (a
// process server rebuilt, or added, on the same target). nil when neither.
func (s *Server) known(ctx context.Context, id string) (*targets.VolumeInfo, error) {
	s.mu.Lock()
	f, ok := s.failed[id]
	s.mu.Unlock()
	if ok && f.info.Size > 0 { // a damaged volume.json: the target knows better
		return &f.info, nil
	}
	vols, err := s.Target.Volumes(ctx)
	if err != nil {
		return nil, fmt.Errorf("look for volume %s in the target: %w", id, err)
	}
	for _, info := range vols {
		if info.ID == id {
			return &info, nil
		}
	}
	return nil, nil
}

// resolve finds the volume key names for p and opens its replica if it is
// not open: key is a volume id, MACHINE/NAME, or a NAME that only one of
// the volumes p may see has. Errors wrap ErrNoReplica, ErrForbidden (a
// volume of another machine, named by id), ErrAmbiguous (the candidates
// listed), or say why the replica cannot be opened.
func (s *Server) resolve(ctx context.Context, p peer, key string) (*volume, error) {
	var info targets.VolumeInfo
	if _, err := uuid.Parse(key); err == nil {
		if v := s.volume(key); v != nil {
			info = v.infoNow()
		} else {
			k, err := s.known(ctx, key)
			if err != nil {
				return nil, err
			}
			if k == nil {
				return nil, fmt.Errorf("%w: %q", ErrNoReplica, key)
			}
			info = *k
		}
		if err := p.mayReach(info); err != nil {
			return nil, err
		}
	} else {
		found, err := s.byName(ctx, p, key)
		if err != nil {
			return nil, err
		}
		info = found
	}
	if v := s.volume(info.ID); v != nil {
		return v, nil
	}
	s.logger().Info("opening the replica of a volume this server has not opened yet", "volume", info.Name, "id", info.ID,
		"machine", info.Machine)
	return s.openVolume(ctx, info)
}

// byName finds the one volume p may see with key's machine and name.
func (s *Server) byName(ctx context.Context, p peer, key string) (targets.VolumeInfo, error) {
	machine, name, qualified := strings.Cut(key, "/")
	if !qualified {
		machine, name = "", key
	}
	all, err := s.allVolumes(ctx)
	if err != nil {
		return targets.VolumeInfo{}, err
	}
	var found []targets.VolumeInfo
	for _, info := range all {
		if info.Name == name && (!qualified || info.Machine == machine) && p.sees(info) {
			found = append(found, info)
		}
	}
	switch len(found) {
	case 0:
		return targets.VolumeInfo{}, fmt.Errorf("%w: %q", ErrNoReplica, key)
	case 1:
		return found[0], nil
	}
	names := make([]string, len(found))
	for i, f := range found {
		names[i] = fmt.Sprintf("%s/%s (id %s)", f.Machine, f.Name, f.ID)
	}
	slices.Sort(names)
	return targets.VolumeInfo{}, fmt.Errorf("%w: %d volumes are called %q: %s; name one as MACHINE/NAME or by its id",
		ErrAmbiguous, len(found), key, strings.Join(names, ", "))
}

// allVolumes is every volume the site knows: open, failed to open, or only
// on the target; the open replica's record wins.
func (s *Server) allVolumes(ctx context.Context) ([]targets.VolumeInfo, error) {
	onTarget, err := s.Target.Volumes(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the target's volumes: %w", err)
	}
	byID := map[string]targets.VolumeInfo{}
	for _, info := range onTarget {
		byID[info.ID] = info
	}
	s.mu.Lock()
	for id, f := range s.failed {
		byID[id] = f.info
	}
	vols := make([]*volume, 0, len(s.vols))
	for _, v := range s.vols {
		vols = append(vols, v)
	}
	s.mu.Unlock()
	for _, v := range vols {
		byID[v.info.ID] = v.infoNow()
	}
	out := make([]targets.VolumeInfo, 0, len(byID))
	for _, info := range byID {
		out = append(out, info)
	}
	return out, nil
}

// claim makes sure v belongs to p's machine before p writes it: a replica
// made before machines were recorded becomes p's (logged); another
// machine's is refused.
func (s *Server) claim(ctx context.Context, p peer, v *volume) error {
	info := v.infoNow()
	if info.Machine == p.name {
		return nil
	}
	if info.Machine != "" {
		return p.mayReach(info)
	}
	if err := s.setMachine(ctx, v, p.name); err != nil {
		return err
	}
	s.logger().Warn("volume had no recorded machine (its replica was made by an earlier version); it belongs to the first agent that sent it a segment",
		"volume", info.Name, "id", info.ID, "machine", p.name)
	return nil
}

// setMachine records v's machine in its replica, then in the spool.
func (s *Server) setMachine(ctx context.Context, v *volume, machine string) error {
	if err := v.rep.SetMachine(ctx, machine); err != nil {
		return fmt.Errorf("record the machine of volume %s: %w", v.info.Name, err)
	}
	v.mu.Lock()
	v.info.Machine = machine
	info := v.info
	v.mu.Unlock()
	return s.spool.saveInfo(info)
}

// statusCode is the HTTP status for an error of resolve or volumeFor.
func statusCode(err error) int {
	switch {
	case errors.Is(err, ErrNoReplica), errors.Is(err, targets.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrAmbiguous), errors.Is(err, ErrPermanent):
		return http.StatusBadRequest
	case errors.Is(err, targets.ErrInUse):
		return http.StatusLocked // another process server holds the replica; retried
	case errors.Is(err, ErrFailedOver):
		return http.StatusGone
	case errors.Is(err, ErrRecoveryState):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}
