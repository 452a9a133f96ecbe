package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// What the site's recovery volumes (package failover) need of the process
// server, and what it needs of them.
//
// The process server knows nothing of overlays or exports. It asks its
// Holds which points retention must keep (a point under test or failover)
// and whether a volume is failed over (its segments are refused with 410
// Gone, so that the agent stops shipping and says why); it lends the
// recovery service a volume's replica (SiteVolume) and routes the
// recovery API's requests (Handle), which only admins may make.

// ErrFailedOver is the answer to an agent whose volume is failed over at
// the site: its writes are no longer taken there.
var ErrFailedOver = errors.New("volume failed over at the site")

// RecoveryState is a recovery volume of a site volume, as its status and
// the recovery API show it.
type RecoveryState struct {
	Volume targets.VolumeInfo `json:"volume"`
	// Kind is RecoveryTest or RecoveryFailover.
	Kind      string    `json:"kind"`
	Point     Point     `json:"point"`
	Since     time.Time `json:"since"`
	Committed bool      `json:"committed,omitempty"` // failover only
	Planned   bool      `json:"planned,omitempty"`   // failover only: to the agent's last tag, nothing lost
	// Export is the NBD export name; URL how a client reaches it when the
	// site serves NBD; File the FUSE file when it has a mount.
	Export string `json:"export"`
	URL    string `json:"url,omitempty"`
	File   string `json:"file,omitempty"`
	// Reprotect, on a failover, is its reverse replication to the
	// primary site's master target.
	Reprotect *ReprotectState `json:"reprotect,omitempty"`
	// AzureDisk is the URL of the page blob (a fixed VHD, in plaintext)
	// made from the failover point for a managed disk (--azure-disk).
	AzureDisk string `json:"azure_disk,omitempty"`
	// Written is how much of the volume was written since it was opened
	// (blocks of the overlay), in bytes.
	Written int64 `json:"written_bytes"`
	// Error says why the recovery volume could not be served again after
	// a restart of the site (clean it up and start it again).
	Error string `json:"error,omitempty"`
}

// Kinds of recovery volumes.
const (
	RecoveryTest     = "test-failover"
	RecoveryFailover = "failover"
)

// Holds is what the recovery service keeps from the process server.
type Holds interface {
	// Pinned returns the points of volume id that retention must keep.
	Pinned(id string) []uint64
	// FailedOver returns the failover of volume id, nil when it is not
	// failed over: its segments are then taken.
	FailedOver(id string) *RecoveryState
	// Recovery returns every recovery volume of volume id (for its status).
	Recovery(id string) []RecoveryState
	// PlannedFailover returns the token of the planned failover volume id's
	// agent is asked to prepare, "" for none.
	PlannedFailover(id string) string
	// Step says what a long recovery request on volume id is doing now
	// (applying the spool, copying a disk, waiting for the agent), "" when
	// none runs.
	Step(id string) string
}

// ReprotectState is a failover volume's reverse replication.
type ReprotectState struct {
	To     string    `json:"to"` // the master target, https://HOST:PORT
	Since  time.Time `json:"since"`
	Verify bool      `json:"verify,omitempty"`
	Full   bool      `json:"full,omitempty"`
	// CandidateBytes is what the first sync considered: the union of the
	// blocks written on the failover volume, those the site applied
	// after the failover point and the primary's dirty regions (the
	// whole volume with Full).
	CandidateBytes int64 `json:"candidate_bytes"`
	// RolledBackBytes is what the primary had written that the site never
	// got, rolled back with --force.
	RolledBackBytes int64 `json:"rolled_back_bytes,omitempty"`
	// BaseSeq is the failover volume's journal dropped when the reprotect
	// began (Shipper.BaseSeq).
	BaseSeq uint64 `json:"base_seq"`
	// Failback is set once a failback chose its tag and the replica's new
	// state, so that a failback run again after a crash reuses them.
	Failback *FailbackPlan `json:"failback,omitempty"`
	// Shipper is the reverse replication's progress (status only).
	Shipper *ShipperStatus `json:"shipper,omitempty"`
}

// FailbackPlan is the switch a failback makes: the failover volume's tag
// TagSeq, and the replica's and the agent's new journal position.
type FailbackPlan struct {
	TagSeq     uint64 `json:"tag_seq"`
	Generation uint64 `json:"generation"`
	Seq        uint64 `json:"seq"` // the replica's point; the agent goes on at Seq+1
}

// SiteVolume is a volume of the site, lent to the recovery service.
type SiteVolume struct{ v *volume }

// Info returns the volume's identity and geometry.
func (sv SiteVolume) Info() targets.VolumeInfo { return sv.v.infoNow() }

// Replica returns the volume's replica. It stays the process server's:
// the caller opens points of it and never writes it.
func (sv SiteVolume) Replica() targets.Replica { return sv.v.rep }

// Fence runs f while no segment of the volume is being received: a
// failover that f records refuses every segment after it, and none is
// half received.
func (sv SiteVolume) Fence(f func()) {
	sv.v.recvMu.Lock()
	defer sv.v.recvMu.Unlock()
	f()
}

// Rebase replaces what the process server knows of the volume's journal:
// with nothing spooled and no segment being received, fn writes the
// replica directly and returns the point it created (a failback makes the
// replica equal to the failover volume); the volume then continues from
// that point's generation and seq, which the agent's rebased journal
// follows. It fails with ErrRecoveryState while segments wait in the spool.
func (sv SiteVolume) Rebase(ctx context.Context, fn func(targets.Replica) (targets.Point, error)) error {
	v := sv.v
	v.recvMu.Lock()
	defer v.recvMu.Unlock()
	v.mu.Lock()
	n := len(v.pending)
	v.mu.Unlock()
	if n > 0 {
		return fmt.Errorf("%w: %d segments of the volume wait in the spool; drain it first", ErrRecoveryState, n)
	}
	p, err := fn(v.rep)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.hasPoint = true
	v.applied = targets.State{Generation: p.Generation, Seq: p.Seq}
	v.spooledGen, v.spooledSeq = p.Generation, p.Seq
	v.mu.Unlock()
	return nil
}

// Drain waits until every segment spooled when it was called is applied
// (so the newest point is the newest the site has), calling progress with
// the bytes still to apply about once a second. It fails when applying
// fails (the reason is the volume's apply error) or ctx ends.
func (sv SiteVolume) Drain(ctx context.Context, progress func(left int64)) error {
	v := sv.v
	_, want := v.spooled()
	last := time.Time{}
	for {
		st := v.status()
		if st.AppliedSeq >= want {
			return nil
		}
		if st.ApplyError != "" {
			return fmt.Errorf("apply the spool of volume %s: %s", st.Info.Name, st.ApplyError)
		}
		if progress != nil && time.Since(last) >= time.Second {
			progress(st.SpoolBytes)
			last = time.Now()
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return fmt.Errorf("apply the spool of volume %s: %w", st.Info.Name, ctx.Err())
		}
	}
}

// Volume returns the volume key names (an id, MACHINE/NAME or a unique
// NAME), as an admin may reach it, opening its replica if needed.
func (s *Server) Volume(ctx context.Context, key string) (SiteVolume, error) {
	v, err := s.resolve(ctx, peer{role: pki.RoleAdmin}, key)
	if err != nil {
		return SiteVolume{}, err
	}
	return SiteVolume{v}, nil
}

// Handle routes pattern to h in the server's API (Handler). Call it before
// Serve. h checks who may call it with Admin or AdminVolume.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.routes = append(s.routes, route{pattern, h})
}

type route struct {
	pattern string
	h       http.Handler
}

// Admin reports whether r comes from an admin certificate; otherwise it
// answers 403 (logged) and returns false.
func (s *Server) Admin(w http.ResponseWriter, r *http.Request) bool {
	p, err := peerOf(r)
	if err == nil && !p.admin() {
		err = fmt.Errorf("%w: this needs an admin client certificate (lifeboat certs issue --role admin); %s is an %s",
			ErrForbidden, p.name, p.role)
	}
	if err != nil {
		s.refuse(w, r, err)
		return false
	}
	return true
}

// AdminVolume returns the volume the request's {id} names when an admin
// asks; otherwise it answers the request (403, 404, 400) and returns false.
func (s *Server) AdminVolume(w http.ResponseWriter, r *http.Request) (SiteVolume, bool) {
	v, _ := s.lookup(w, r, true)
	if v == nil {
		return SiteVolume{}, false
	}
	return SiteVolume{v}, true
}

// Refuse answers err with the status code it stands for (404 for an
// unknown point, 409 for a state that does not allow the request, 400 for
// a bad request, 403) and logs it.
func (s *Server) Refuse(w http.ResponseWriter, r *http.Request, err error) { s.refuse(w, r, err) }

// pinned returns the points of volume id that retention keeps whatever
// its schedule says.
func (s *Server) pinned(id string) []uint64 {
	if s.Holds == nil {
		return nil
	}
	return s.Holds.Pinned(id)
}

// failedOver is the refusal of volume id's segments, or nil.
func (s *Server) failedOver(id string) error {
	if s.Holds == nil {
		return nil
	}
	f := s.Holds.FailedOver(id)
	if f == nil {
		return nil
	}
	return failedOverError(*f)
}

func failedOverError(f RecoveryState) error {
	state := "not committed yet"
	if f.Committed {
		state = "committed"
	}
	point := fmt.Sprintf("recovery point %d (%s, %s)", f.Point.Seq, f.Point.Time.UTC().Format(time.RFC3339), state)
	if f.Point.Seq == 0 {
		point = "a recovery point the site is choosing"
	}
	return fmt.Errorf("%w at %s to %s: the site takes no more writes of %s/%s, "+
		"and this agent keeps tracking what changes here for the failback",
		ErrFailedOver, f.Since.UTC().Format(time.RFC3339), point, f.Volume.Machine, f.Volume.Name)
}

// keep removes the pinned points from drop.
func keep(drop []targets.Point, pinned []uint64) []targets.Point {
	if len(pinned) == 0 {
		return drop
	}
	return slices.DeleteFunc(drop, func(p targets.Point) bool { return slices.Contains(pinned, p.Seq) })
}
