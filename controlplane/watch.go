package controlplane

import (
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Watch streams the peer set to an admitted node: a snapshot (or the
// deltas since the revision it resumes from), then every change. The
// caller's own record is not sent; if the caller leaves the peer set its
// stream ends with PermissionDenied. With a shared store, a revision this
// replica has not reached yet (the agent saw it on another replica) is
// waited for (StoreWait) before the deltas, else the agent gets a
// snapshot; a replica that lost its store refuses new watches after
// StaleWatchLimit and ends open ones with Unavailable.
func (s *Server) Watch(req *cpv1.WatchRequest, stream cpv1.ControlPlane_WatchServer) error {
	if err := s.watchRefusal(); err != nil {
		return err
	}
	// Check and subscribe under the state lock, so a revocation cannot land
	// between the check and the subscription and leave the stream open.
	s.mu.Lock()
	if s.shared != nil && req.GetRevision() > s.cacheRev {
		s.awaitLocked(req.GetRevision(), s.cfg.StoreWait)
	}
	rec, err := s.activeCaller(stream.Context())
	if err != nil {
		s.mu.Unlock()
		return err
	}
	me := rec.Name
	initial, sub := s.hub.subscribe(me, req.GetRevision(), func() [][]byte { return s.snapshotLocked(me) })
	s.mu.Unlock()
	s.metrics.watchers.Set(float64(s.hub.watchers()))
	defer func() {
		s.hub.unsubscribe(sub)
		s.metrics.watchers.Set(float64(s.hub.watchers()))
	}()

	for _, ev := range initial {
		if err := s.sendFor(stream, me, ev); err != nil {
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-s.shutdown:
			return status.Error(codes.Unavailable, "control plane shutting down; reconnect and resume from the last revision")
		case ev, ok := <-sub.ch:
			if !ok {
				if sub.reason != "" {
					return status.Error(codes.Unavailable, sub.reason)
				}
				return status.Error(codes.Unavailable, "watch fell behind; reconnect and resume from the last revision")
			}
			if err := s.sendFor(stream, me, ev); err != nil {
				return err
			}
		}
	}
}

// sendFor sends ev to node me, leaving out me's own record.
func (s *Server) sendFor(stream cpv1.ControlPlane_WatchServer, me string, he *hubEvent) error {
	ev := he.ev
	switch e := ev.Event.(type) {
	case *cpv1.WatchEvent_Upsert:
		if e.Upsert.GetName() == me {
			return stream.Send(&cpv1.WatchEvent{Revision: ev.Revision}) // a revision marker only
		}
	case *cpv1.WatchEvent_Delete:
		if e.Delete == me {
			return status.Errorf(codes.PermissionDenied, "node %q left the peer set at revision %d", me, ev.Revision)
		}
	}
	msg, err := he.encoded()
	if err != nil {
		return status.Errorf(codes.Internal, "encode peer event: %v", err)
	}
	return stream.SendMsg(msg)
}

// snapshotLocked lists the encoded active peers other than me; the caller
// holds s.mu.
func (s *Server) snapshotLocked(me string) [][]byte { return s.nodes.activePeerWire(me) }

// stopWatches ends every open Watch stream (shutdown); idempotent.
func (s *Server) stopWatches() {
	s.shutdownOnce.Do(func() { close(s.shutdown) })
}
