package control

// ReconcileForTest raises and clears the events of cond, as Run does.
func ReconcileForTest(s *Server, cond map[condition]string) ([]Event, error) {
	return s.Store.reconcile(cond, s.now())
}
