package controlplane

// UnauthenticatedState counts the entries the control plane keeps on behalf
// of callers that have not proven anything (tests).
func (s *Server) UnauthenticatedState() int {
	s.challenges.mu.Lock()
	defer s.challenges.mu.Unlock()
	return len(s.challenges.pending)
}
