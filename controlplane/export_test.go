package controlplane

// UnauthenticatedState counts the entries the control plane keeps on behalf
// of callers that have not proven anything (tests): used challenges and
// rate-limit buckets.
func (s *Server) UnauthenticatedState() int {
	return s.challenges.remembered() + s.limiter.sources()
}
