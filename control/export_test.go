package control

import "time"

// ReconcileForTest raises and clears the events of cond, as Run does.
func ReconcileForTest(s *Server, cond map[condition]string) ([]Event, error) {
	return s.Store.reconcile(cond, s.now(), true)
}

// BeatSiteForTest records the site's own process server's heartbeat.
func BeatSiteForTest(s *Server) { s.beatSite() }

// ReassignForTest moves the items of process servers that are down.
func ReassignForTest(s *Server) error { return s.reassign(nil) }

// PruneEventsForTest deletes events cleared before cutoff.
func PruneEventsForTest(s *Server, cutoff time.Time) (int, error) { return s.Store.pruneEvents(cutoff) }

// CheckCSRForTest is checkCSR.
func CheckCSRForTest(r RegisterRequest) (any, error) { return checkCSR(r) }

// ConditionCodesForTest lists the codes of cond.
func ConditionCodesForTest(cond map[condition]string) map[Code]bool {
	out := map[Code]bool{}
	for c := range cond {
		out[c.Code] = true
	}
	return out
}

// ReconcileAtStartForTest is Run's reconcile within the heartbeat timeout
// of a start: it raises, never clears.
func ReconcileAtStartForTest(s *Server, cond map[condition]string) ([]Event, error) {
	return s.Store.reconcile(cond, s.now(), false)
}
