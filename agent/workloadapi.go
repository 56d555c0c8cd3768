package agent

import (
	"context"

	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/agent/workload"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultWorkloadSocket is where the CLI serves the SPIFFE Workload API. It
// has a directory of its own so that pods can mount that directory (a
// mounted socket file would go stale when the agent restarts) without
// seeing the agent's root-only local API socket in /run/confmesh.
const DefaultWorkloadSocket = "/run/confmesh/workload/workload.sock"

// workloadBackend lets the Workload API server reach the agent's pod store,
// the control plane and the trust bundles.
type workloadBackend struct{ a *Agent }

var _ workload.Backend = workloadBackend{}

func (b workloadBackend) Pods() ([]workload.Pod, error) {
	recs, err := b.a.pods.list()
	if err != nil {
		return nil, err
	}
	b.a.resolvePending(context.Background(), recs)
	out := make([]workload.Pod, 0, len(recs))
	for _, r := range recs {
		if r.UID == "" || r.Namespace == "" || r.Name == "" {
			continue // no Kubernetes identity: the CNI got no pod args
		}
		if r.ServiceAccount == "" {
			continue // the pod-metadata source does not know it: no identity
		}
		out = append(out, workload.Pod{UID: r.UID, Namespace: r.Namespace, Name: r.Name, ServiceAccount: r.ServiceAccount, Netns: r.Netns})
	}
	return out, nil
}

func podIdentity(p workload.Pod) *cpv1.PodIdentity {
	return &cpv1.PodIdentity{Namespace: p.Namespace, Name: p.Name, Uid: p.UID, ServiceAccount: p.ServiceAccount}
}

// ensureRegistered registers the pod with the control plane first if that
// was deferred (the pod started while the control plane was away).
func (b workloadBackend) ensureRegistered(ctx context.Context, p workload.Pod) {
	recs, err := b.a.pods.list()
	if err != nil {
		return
	}
	for _, r := range recs {
		if r.UID == p.UID && !r.Registered {
			if err := b.a.registerWithControlPlane(ctx, r); err != nil {
				b.a.log.Warn("pod registration with the control plane failed", "pod", r.Namespace+"/"+r.Name, "err", err)
			}
		}
	}
}

// errNodeStopped: a revoked or refused node signs nothing for its pods and
// does not ask the control plane.
var errNodeStopped = status.Error(codes.PermissionDenied, "this node was revoked or refused by the control plane: no workload identities")

func (b workloadBackend) SignX509(ctx context.Context, p workload.Pod, csr []byte) ([][]byte, error) {
	if b.a.stopped() {
		return nil, errNodeStopped
	}
	b.ensureRegistered(ctx, p)
	var resp *cpv1.SignWorkloadResponse
	conn, err := b.a.call(ctx, func(ctx context.Context, conn *cpclient.Conn) error {
		var err error
		resp, err = conn.Client.SignWorkload(ctx, &cpv1.SignWorkloadRequest{Csr: csr, Pod: podIdentity(p)})
		return err
	})
	if err != nil {
		return nil, err
	}
	conn.Close()
	return resp.GetSvid(), nil
}

func (b workloadBackend) SignJWT(ctx context.Context, p workload.Pod, audience []string) (string, error) {
	if b.a.stopped() {
		return "", errNodeStopped
	}
	b.ensureRegistered(ctx, p)
	var resp *cpv1.SignJWTResponse
	conn, err := b.a.call(ctx, func(ctx context.Context, conn *cpclient.Conn) error {
		var err error
		resp, err = conn.Client.SignJWT(ctx, &cpv1.SignJWTRequest{Pod: podIdentity(p), Audience: audience})
		return err
	})
	if err != nil {
		return "", err
	}
	conn.Close()
	if len(resp.GetJwtBundle()) > 0 {
		b.a.adoptJWTBundle(resp.GetJwtBundle())
	}
	return resp.GetToken(), nil
}

func (b workloadBackend) X509Bundle() *x509bundle.Bundle {
	b.a.mu.Lock()
	defer b.a.mu.Unlock()
	return b.a.bundle
}

func (b workloadBackend) JWTBundle() *jwtbundle.Bundle {
	b.a.mu.Lock()
	defer b.a.mu.Unlock()
	return b.a.jwtBundle
}

// adoptJWTBundle takes the JWKS the control plane sent with Join, Renew or
// SignJWT, and pushes bundle changes to workloads.
func (a *Agent) adoptJWTBundle(jwks []byte) {
	if len(jwks) == 0 {
		a.log.Warn("control plane sent no JWT bundle; JWT-SVIDs are unavailable")
	} else if jb, err := jwtbundle.Parse(a.td, jwks); err != nil {
		a.log.Error("control plane sent an unusable JWT bundle", "err", err)
	} else {
		a.mu.Lock()
		a.jwtBundle = jb
		a.mu.Unlock()
	}
	a.mu.Lock()
	wl := a.workload
	a.mu.Unlock()
	if wl != nil {
		wl.UpdateBundles()
	}
}

// startWorkloadAPI serves the SPIFFE Workload API on Config.WorkloadSocket
// (nothing when it is empty) until ctx ends.
func (a *Agent) startWorkloadAPI(ctx context.Context) error {
	if a.cfg.WorkloadSocket == "" {
		return nil
	}
	srv, err := workload.New(workload.Config{Backend: workloadBackend{a}, TrustDomain: a.td, Logger: a.log, Limits: a.cfg.WorkloadLimits})
	if err != nil {
		return err
	}
	lis, err := workload.Listen(a.cfg.WorkloadSocket)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.workload = srv
	a.mu.Unlock()
	go func() {
		if err := srv.Serve(ctx, lis); err != nil && ctx.Err() == nil {
			a.log.Error("SPIFFE Workload API stopped", "err", err)
		}
	}()
	a.log.Info("SPIFFE Workload API listening", "socket", a.cfg.WorkloadSocket)
	return nil
}

// DefaultPodMetadata is the standalone pod-metadata file the CLI reads
// (podmeta.File): root-owned, it names each pod's service account.
const DefaultPodMetadata = "/etc/confmesh/pods.yaml"
