package control

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"lifeboat/pipeline"
	"lifeboat/tracker"
)

// Item states, as `lifeboat status` shows them.
const (
	StateWaiting      = "waiting for agent"
	StateInitial      = "initial replication"
	StateProtected    = "protected"
	StateResyncing    = "resyncing"
	StateBitmap       = "bitmap mode"
	StatePaused       = "paused"
	StateTestFailover = "test failover active"
	StateFailedOver   = "failed over"
	StateReprotecting = "reprotecting"
)

// Thresholds of the health rules.
const (
	SpoolWarnFraction = 0.70
	SpoolCritFraction = 0.80
	CertExpiryWarning = 30 * 24 * time.Hour
	InitialStuckAfter = 10 * time.Minute
)

// ItemStatus is one protected item as `lifeboat status` shows it.
type ItemStatus struct {
	Machine       string          `json:"machine"`
	Volume        string          `json:"volume"`
	Policy        string          `json:"policy"`
	ProcessServer string          `json:"process_server"`
	State         string          `json:"state"`
	Progress      *float64        `json:"progress_percent,omitempty"`
	RPOSeconds    *float64        `json:"rpo_seconds"`
	LatestPoint   *pipeline.Point `json:"latest_point"`
	Health        Health          `json:"health"`
	Reasons       []string        `json:"reasons"`
}

// SiteStatus is the whole site: its items and their worst health.
type SiteStatus struct {
	Health         Health              `json:"health"`
	Items          []ItemStatus        `json:"items"`
	Machines       []MachineView       `json:"machines"`
	ProcessServers []ProcessServerView `json:"process_servers"`
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request, peer string) {
	st, _, err := s.Evaluate()
	s.answer(w, r, peer, st, err)
}

// progressAt is an initial replication's progress and when it last moved.
type progressAt struct {
	Done  int64
	Since time.Time
}

// Evaluate computes the site's status and the conditions that should have
// an open event now.
func (s *Server) Evaluate() (SiteStatus, map[condition]string, error) {
	now := s.now()
	cond := map[condition]string{}
	st := SiteStatus{Health: Healthy, Items: []ItemStatus{}}
	machines, err := s.MachineViews()
	if err != nil {
		return st, nil, err
	}
	st.Machines = machines
	items, err := s.Store.Items()
	if err != nil {
		return st, nil, err
	}
	site := map[string]pipeline.VolumeStatus{}
	if s.Site != nil {
		for _, v := range s.Site() {
			site[v.Info.Machine+"/"+v.Info.Name] = v
		}
	}
	byName := map[string]Machine{}
	for _, m := range machines {
		byName[m.Name] = m.Machine
		if reason := s.machineProblem(m.Machine, m.Items); reason != "" {
			cond[condition{CodeNoHeartbeat, m.Name}] = reason
		}
		if left := m.CertExpires.Sub(now); left < CertExpiryWarning {
			cond[condition{CodeCertExpiry, m.Name}] = fmt.Sprintf("the certificate of %s expires on %s", m.Name, m.CertExpires.Format(time.DateOnly))
		}
	}
	for _, it := range items {
		p, err := s.Store.Policy(it.Policy)
		if err != nil {
			return st, nil, err
		}
		sv := site[it.Key()]
		if sv.LatestPoint == nil {
			sv.LatestPoint = s.reportedPoint(it)
		}
		is := s.itemStatus(it, p, sv, now, cond)
		if reason, silent := cond[condition{CodeNoHeartbeat, it.Machine}]; silent {
			is.Health = Critical
			is.Reasons = append(is.Reasons, reason)
			s.silentRPO(&is, p, now, cond)
		}
		st.Health = worse(st.Health, is.Health)
		st.Items = append(st.Items, is)
	}
	// A volume the site no longer protects that its agent cannot let go
	// of (unprotect pending: a loop device or an NBD client still has it).
	protected := map[string]bool{}
	for _, it := range items {
		protected[it.Key()] = true
	}
	for _, m := range machines {
		b, _ := s.beat(m.Name)
		for name, rep := range b.Volumes {
			if key := m.Name + "/" + name; rep.Error != "" && !protected[key] {
				cond[condition{CodeVolumeError, key}] = rep.Error
			}
		}
	}
	if st.ProcessServers, err = s.ProcessServerViews(); err != nil {
		return st, nil, err
	}
	for _, ps := range st.ProcessServers {
		if ps.Health == Critical {
			cond[condition{CodePSDown, ps.Name}] = ps.Reason
		}
		if ps.SpoolQuota > 0 {
			f := float64(ps.SpoolBytes) / float64(ps.SpoolQuota)
			msg := fmt.Sprintf("the spool of process server %s holds %d of %d bytes (%.0f %%)", ps.Name, ps.SpoolBytes, ps.SpoolQuota, 100*f)
			switch {
			case f > SpoolCritFraction:
				cond[condition{CodeSpoolCritical, ps.Name}] = msg
			case f > SpoolWarnFraction:
				cond[condition{CodeSpoolWarning, ps.Name}] = msg
			}
		}
	}
	for c := range cond {
		st.Health = worse(st.Health, codeInfo[c.Code].Severity)
	}
	return st, cond, nil
}

// silentRPO is the RPO of an item whose agent is silent: nobody knows
// what it wrote since, so the newest point's age is what a disaster now
// could lose. A failed-over item's agent is expected to be silent.
func (s *Server) silentRPO(is *ItemStatus, p Policy, now time.Time, cond map[condition]string) {
	if is.LatestPoint == nil || is.State == StateFailedOver || is.State == StateReprotecting {
		return
	}
	rpo := now.Sub(is.LatestPoint.Time).Seconds()
	is.RPOSeconds = &rpo
	if rpo > p.RPOThreshold.Duration().Seconds() {
		key := is.Machine + "/" + is.Volume
		msg := fmt.Sprintf("RPO of %s is at least %.0fs (its agent is silent; the newest point is that old), over its policy's threshold of %ds",
			key, rpo, p.RPOThreshold)
		cond[condition{CodeRPOThreshold, key}] = msg
		is.Reasons = append(is.Reasons, msg)
	}
}

// reportedPoint is the newest point a process server reported for it,
// for an item the site's own process server does not hold.
func (s *Server) reportedPoint(it Item) *pipeline.Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *pipeline.Point
	for _, b := range s.psBeats {
		if p := b.Points[it.Key()]; p != nil && (best == nil || p.Time.After(best.Time)) {
			best = p
		}
	}
	return best
}

// machineProblem says why a machine with items is not heard from, or "".
func (s *Server) machineProblem(m Machine, items int) string {
	if items == 0 {
		return ""
	}
	last, ok := s.beat(m.Name)
	since := last.At
	if !ok {
		s.mu.Lock()
		since = s.started
		s.mu.Unlock()
		if m.RegisteredAt.After(since) {
			since = m.RegisteredAt
		}
	}
	if gap := s.now().Sub(since); gap > s.heartbeatTimeout() {
		if !ok {
			return fmt.Sprintf("no heartbeat from %s since the server started %v ago", m.Name, gap.Round(time.Second))
		}
		return fmt.Sprintf("no heartbeat from %s for %v (last at %s)", m.Name, gap.Round(time.Second), last.At.UTC().Format(time.RFC3339))
	}
	return ""
}

// itemStatus judges one item and adds its conditions to cond.
func (s *Server) itemStatus(it Item, p Policy, site pipeline.VolumeStatus, now time.Time, cond map[condition]string) ItemStatus {
	is := ItemStatus{Machine: it.Machine, Volume: it.Volume, Policy: it.Policy, ProcessServer: it.ProcessServer,
		State: StateWaiting, Health: Healthy, Reasons: []string{}, LatestPoint: site.LatestPoint}
	key := it.Key()
	add := func(code Code, msg string) {
		cond[condition{code, key}] = msg
		is.Health = worse(is.Health, codeInfo[code].Severity)
		is.Reasons = append(is.Reasons, msg)
	}
	b, _ := s.beat(it.Machine)
	rep, reported := b.Volumes[it.Volume]
	if reported && rep.Error != "" {
		add(CodeVolumeError, rep.Error)
	}
	if reported && rep.Shipper != nil {
		sh := rep.Shipper
		is.RPOSeconds = sh.RPOSeconds
		is.State = StateProtected
		switch {
		case sh.Resync != nil:
			pct := 0.0
			if sh.Resync.Total > 0 {
				pct = 100 * float64(sh.Resync.Done) / float64(sh.Resync.Total)
			}
			is.Progress = &pct
			is.State = StateResyncing
			if site.LatestPoint == nil {
				is.State = StateInitial
				s.checkStuck(key, sh.Resync.Done, now, add)
			}
		case sh.Tracker.Mode == tracker.ModeBitmap:
			is.State = StateBitmap
			add(CodeJournalQuota, fmt.Sprintf("%s tracks dirty regions only: %s", key, sh.Tracker.ModeReason))
		case site.LatestPoint == nil:
			is.State = StateInitial
		}
		if sh.Stopped != "" {
			add(CodeReplicationStop, sh.Stopped)
		}
		if sh.RPOSeconds != nil && *sh.RPOSeconds > p.RPOThreshold.Duration().Seconds() {
			add(CodeRPOThreshold, fmt.Sprintf("RPO of %s is %.0fs, over its policy's threshold of %ds", key, *sh.RPOSeconds, p.RPOThreshold))
		}
	}
	if it.Paused {
		is.State = StatePaused
	}
	for _, rs := range site.Recovery {
		switch {
		case rs.Kind == pipeline.RecoveryTest && is.State != StateFailedOver && is.State != StateReprotecting:
			is.State = StateTestFailover
		case rs.Kind == pipeline.RecoveryFailover && rs.Reprotect != nil:
			is.State = StateReprotecting
			// Judged by the failback policy: the RPO is the reverse
			// replication's.
			if sh := rs.Reprotect.Shipper; sh != nil {
				is.RPOSeconds = sh.RPOSeconds
				if sh.RPOSeconds != nil && *sh.RPOSeconds > p.Failback.RPOThreshold.Duration().Seconds() {
					add(CodeRPOThreshold, fmt.Sprintf("reverse replication RPO of %s is %.0fs, over its failback policy's threshold of %ds",
						key, *sh.RPOSeconds, p.Failback.RPOThreshold))
				}
			}
		case rs.Kind == pipeline.RecoveryFailover:
			is.State = StateFailedOver
		}
	}
	return is
}

// checkStuck raises CodeInitialStuck when an initial replication has not
// moved for InitialStuckAfter.
func (s *Server) checkStuck(key string, done int64, now time.Time, add func(Code, string)) {
	s.mu.Lock()
	if s.stuck == nil {
		s.stuck = map[string]progressAt{}
	}
	p, ok := s.stuck[key]
	if !ok || p.Done != done {
		p = progressAt{Done: done, Since: now}
		s.stuck[key] = p
	}
	s.mu.Unlock()
	if d := now.Sub(p.Since); d > InitialStuckAfter {
		add(CodeInitialStuck, fmt.Sprintf("initial replication of %s has not moved for %v", key, d.Round(time.Second)))
	}
}

// Run evaluates the site every interval and raises and clears events,
// logging each, until ctx is done.
func (s *Server) Run(ctx context.Context, interval time.Duration) {
	s.mu.Lock()
	s.started = s.now()
	s.mu.Unlock()
	t := time.NewTicker(interval)
	defer t.Stop()
	var pruned time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.beatSite()
		if now := s.now(); now.Sub(pruned) > time.Hour {
			pruned = now
			if n, err := s.Store.pruneEvents(now.Add(-EventRetention)); err != nil {
				s.log().Error("prune old events", "err", err)
			} else if n > 0 {
				s.log().Info("old events pruned", "events", n, "cleared_before", now.Add(-EventRetention))
			}
		}
		_, cond, err := s.Evaluate()
		if err == nil {
			var changed []Event
			s.mu.Lock()
			settled := s.now().Sub(s.started) > s.heartbeatTimeout()
			s.mu.Unlock()
			changed, err = s.Store.reconcile(cond, s.now(), settled)
			for _, e := range changed {
				if e.Cleared != nil {
					s.log().Info("event cleared", "code", e.Code, "subject", e.Subject, "message", e.Message)
				} else {
					s.log().Warn("event raised", "code", e.Code, "severity", e.Severity, "subject", e.Subject, "message", e.Message, "advice", e.Advice)
				}
			}
		}
		if err == nil {
			err = s.reassign(nil)
		}
		if err != nil {
			s.log().Error("evaluate the site's health", "err", err)
		}
	}
}
