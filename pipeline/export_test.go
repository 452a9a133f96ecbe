package pipeline

// KeptMemory returns the bytes of receive buffers kept for the applier.
func KeptMemory(s *Server) int64 { return s.keptMem.held.Load() }
