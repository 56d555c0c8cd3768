package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/agent/podmeta"
	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
)

// PodRecord is a pod the CNI plugin networked on this node.
type PodRecord struct {
	ContainerID    string `json:"containerID"`
	Netns          string `json:"netns"`
	Interface      string `json:"interface"`
	IP             string `json:"ip"`
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	UID            string `json:"uid"`
	ServiceAccount string `json:"serviceAccount"`
	// Registered is true once the control plane knows the pod.
	Registered bool `json:"registered"`
}

var containerIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// podStore keeps pod records as one JSON file each under <state>/pods, so
// they survive agent restarts.
type podStore struct {
	mu  sync.Mutex
	dir string
}

func openPodStore(stateDir string) (*podStore, error) {
	dir := filepath.Join(stateDir, "pods")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pod store: %w", err)
	}
	return &podStore{dir: dir}, nil
}

func (s *podStore) path(id string) string { return filepath.Join(s.dir, id+".json") }

func (s *podStore) put(p *PodRecord) error {
	if !containerIDPattern.MatchString(p.ContainerID) {
		return fmt.Errorf("container ID %q is not a plain identifier", p.ContainerID)
	}
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return writeFileAtomic(s.path(p.ContainerID), data, 0o600)
}

func (s *podStore) get(id string) (*PodRecord, error) {
	if !containerIDPattern.MatchString(id) {
		return nil, fmt.Errorf("container ID %q is not a plain identifier", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := os.ReadFile(s.path(id))
	if err != nil {
		return nil, err
	}
	var p PodRecord
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("pod record %s: %w", id, err)
	}
	return &p, nil
}

func (s *podStore) delete(id string) error {
	if !containerIDPattern.MatchString(id) {
		return fmt.Errorf("container ID %q is not a plain identifier", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (s *podStore) list() ([]*PodRecord, error) {
	s.mu.Lock()
	entries, err := os.ReadDir(s.dir)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var out []*PodRecord
	for _, e := range entries {
		id, ok := cutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		p, err := s.get(id)
		if err != nil {
			continue
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ContainerID < out[j].ContainerID })
	return out, nil
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)], true
	}
	return s, false
}

// Pods lists the pods registered on this node (the Workload API looks
// callers up here by network namespace).
func (a *Agent) Pods() ([]*PodRecord, error) { return a.pods.list() }

// RegisterPod records a pod locally (so networking never waits for the
// control plane) and tells the control plane when it can.
func (a *Agent) RegisterPod(ctx context.Context, p *agentv1.Pod) error {
	// The service account comes from the pod-metadata source, never from
	// the request (p.ServiceAccount is what the pod or the runtime said).
	rec := &PodRecord{
		ContainerID: p.GetContainerId(), Netns: p.GetNetns(), Interface: p.GetInterface(), IP: p.GetIp(),
		Namespace: p.GetNamespace(), Name: p.GetName(), UID: p.GetUid(),
	}
	if rec.UID != "" && rec.Namespace != "" && rec.Name != "" {
		rec.ServiceAccount = a.lookupServiceAccount(ctx, rec)
	}
	if err := a.pods.put(rec); err != nil {
		return err
	}
	if rec.ServiceAccount != "" {
		if err := a.registerWithControlPlane(ctx, rec); err != nil {
			a.log.Warn("pod registered locally; control plane registration deferred", "pod", rec.Namespace+"/"+rec.Name, "err", err)
		}
	}
	return nil
}

// UnregisterPod forgets a pod locally and at the control plane (best effort).
func (a *Agent) UnregisterPod(ctx context.Context, containerID string) error {
	rec, err := a.pods.get(containerID)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.Registered && rec.UID != "" {
		if conn, err := a.dial(ctx); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = conn.Client.UnregisterPod(cctx, &cpv1.UnregisterPodRequest{Uid: rec.UID})
			cancel()
			conn.Close()
			if err != nil {
				a.log.Warn("control plane pod unregistration failed", "pod", rec.UID, "err", err)
			}
		}
	}
	return a.pods.delete(containerID)
}

func (a *Agent) registerWithControlPlane(ctx context.Context, rec *PodRecord) error {
	a.mu.Lock()
	joined := a.joined
	a.mu.Unlock()
	if !joined {
		return errors.New("not joined yet")
	}
	conn, err := a.call(ctx, func(ctx context.Context, conn *cpclient.Conn) error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := conn.Client.RegisterPod(cctx, &cpv1.RegisterPodRequest{Pod: &cpv1.PodIdentity{
			Namespace: rec.Namespace, Name: rec.Name, Uid: rec.UID, ServiceAccount: rec.ServiceAccount,
		}})
		return err
	})
	if err != nil {
		return err
	}
	conn.Close()
	rec.Registered = true
	return a.pods.put(rec)
}

// registerPendingPods retries control plane registration after a (re)join.
func (a *Agent) registerPendingPods(ctx context.Context) {
	pods, err := a.pods.list()
	if err != nil {
		return
	}
	for _, p := range pods {
		if p.UID == "" || p.Namespace == "" || p.Name == "" || p.ServiceAccount == "" {
			continue
		}
		if err := a.registerWithControlPlane(ctx, p); err != nil {
			a.log.Warn("pod registration with the control plane failed", "pod", p.Namespace+"/"+p.Name, "err", err)
		}
	}
}

// lookupServiceAccount asks the pod-metadata source for rec's service
// account; "" when the source does not know the pod (no identity).
func (a *Agent) lookupServiceAccount(ctx context.Context, rec *PodRecord) string {
	src := a.cfg.PodMetadata
	if src == nil {
		src = podmeta.None{}
	}
	md, err := src.Lookup(ctx, podmeta.Pod{Namespace: rec.Namespace, Name: rec.Name, UID: rec.UID})
	if err != nil {
		a.log.Warn("pod has no workload identity: its service account is unknown", "pod", rec.Namespace+"/"+rec.Name, "source", src.String(), "err", err)
		return ""
	}
	return md.ServiceAccount
}

// resolvePending gives pods whose service account was unknown at ADD the
// one the pod-metadata source knows now (metadata may be written after the
// pod started), and records it.
func (a *Agent) resolvePending(ctx context.Context, recs []*PodRecord) {
	for _, r := range recs {
		if r.ServiceAccount != "" || r.UID == "" || r.Namespace == "" || r.Name == "" {
			continue
		}
		if sa := a.lookupServiceAccount(ctx, r); sa != "" {
			r.ServiceAccount = sa
			r.Registered = false
			if err := a.pods.put(r); err != nil {
				a.log.Warn("pod record update failed", "pod", r.Namespace+"/"+r.Name, "err", err)
			}
		}
	}
}
