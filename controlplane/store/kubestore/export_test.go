package kubestore

// ClaimPodCIDR is the first step of PutNodeIf alone: a replica that has
// claimed cidr for node and not yet written the node.
func (s *Store) ClaimPodCIDR(node, cidr string) error {
	ctx, cancel := s.ctx()
	defer cancel()
	return s.claimCIDR(ctx, cidr, node)
}

// ClaimedAtAnnotation is the annotation a claim's age is read from.
const ClaimedAtAnnotation = annotationClaimedAt
