package nbd

// Counters of the payload budgets, for tests.

// HeldBytes is the payload bytes all connections hold now.
func (s *Server) HeldBytes() int64 { return s.held.Load() }

// PeakConnBytes is the most payload bytes one connection has held.
func (s *Server) PeakConnBytes() int64 { return s.peak.Load() }

// ReadersWaiting is the number of connections whose reader waits for
// budget instead of reading requests.
func (s *Server) ReadersWaiting() int { return int(s.waiting.Load()) }

// Connections is the number of connections served and being refused.
func (s *Server) Connections() (served, refusing int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.admitted, s.refusing
}

// WarnExposed is warnExposed, for addresses a test cannot bind.
var WarnExposed = warnExposed

// ReplyWrites is the writes of queued (small) replies on all connections
// so far.
func (s *Server) ReplyWrites() int64 { return s.replyWrites.Load() }
