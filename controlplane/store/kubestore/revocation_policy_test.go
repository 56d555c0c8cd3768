package kubestore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store/kubestore"
	"github.com/confmesh/confmesh/controlplane/store/storetest"
	"github.com/confmesh/confmesh/internal/kubetest"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// breakGlassGroup is the group revocation-policy.yaml lets update and
// delete NodeRevocations (docs/security.md).
const breakGlassGroup = "confmesh:revocation-break-glass"

// applyAdmissionPolicies renders a manifests/ overlay as `kubectl apply
// -k` would and creates its ValidatingAdmissionPolicies and bindings, as
// rendered, read strictly (an unknown field fails).
func applyAdmissionPolicies(t *testing.T, c kubernetes.Interface, overlay string) int {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), overlay)
	if err != nil {
		t.Fatalf("kustomize %s: %v", overlay, err)
	}
	ctx, n := context.Background(), 0
	for _, r := range res.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		switch r.GetKind() {
		case "ValidatingAdmissionPolicy":
			var p admissionv1.ValidatingAdmissionPolicy
			if err := yaml.UnmarshalStrict(doc, &p); err != nil {
				t.Fatalf("%s: %v", overlay, err)
			}
			_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &p, metav1.CreateOptions{})
		case "ValidatingAdmissionPolicyBinding":
			var b admissionv1.ValidatingAdmissionPolicyBinding
			if err := yaml.UnmarshalStrict(doc, &b); err != nil {
				t.Fatalf("%s: %v", overlay, err)
			}
			_, err = c.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &b, metav1.CreateOptions{})
		default:
			continue
		}
		if err != nil {
			t.Fatalf("%s: %s: %v", overlay, r.GetKind(), err)
		}
		n++
	}
	return n
}

// TestRevocationsAppendOnly: with rbac.yaml and revocation-policy.yaml
// installed on a real API server, the control plane's service account
// records and reads revocations but can neither update nor delete one; a
// cluster admin (system:masters) cannot either; a member of the
// break-glass group can. A revocation that survives is still enforced.
func TestRevocationsAppendOnly(t *testing.T) {
	admin2 := kubetest.User{Name: "ops-admin", Groups: []string{"system:masters", "system:authenticated"}, Token: "ops-admin-" + fmt.Sprint(time.Now().UnixNano())}
	glass := kubetest.User{Name: "ops-break-glass", Groups: []string{"system:masters", breakGlassGroup, "system:authenticated"}, Token: "break-glass-" + fmt.Sprint(time.Now().UnixNano())}
	e := setup(t, admin2, glass)
	ctx := context.Background()
	as := func(u kubetest.User) dynamic.ResourceInterface {
		d, err := dynamic.NewForConfig(e.api.Config(u))
		if err != nil {
			t.Fatal(err)
		}
		return d.Resource(kubestore.RevocationsGVR)
	}
	cp, adm, bg := as(cpUser), as(admin2), as(glass)

	// The control plane records a revocation the way it does (kubestore).
	s := e.open(t, "replica-a")
	n := storetest.Node("web-1", "10.244.5.0/24")
	if _, err := s.PutNode(n); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RevokeNode("web-1", time.Now()); err != nil {
		t.Fatalf("the control plane cannot record a revocation: %v", err)
	}
	l, err := cp.List(ctx, metav1.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("the control plane lists revocations: %v, %v", l, err)
	}
	name := l.Items[0].GetName()
	w, err := cp.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("the control plane cannot watch revocations: %v", err)
	}
	w.Stop()

	// The control plane's service account: RBAC refuses update and delete.
	relabel := func(ri dynamic.ResourceInterface) error {
		u, err := ri.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		u.SetLabels(map[string]string{"confmesh.io/node": "another"})
		_, err = ri.Update(ctx, u, metav1.UpdateOptions{})
		return err
	}
	if err := cp.Delete(ctx, name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the control plane's service account deletes a NodeRevocation: err = %v, want Forbidden", err)
	}
	if err := cp.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the control plane's service account deletes all NodeRevocations: err = %v, want Forbidden", err)
	}
	if err := relabel(cp); !apierrors.IsForbidden(err) {
		t.Fatalf("the control plane's service account updates a NodeRevocation: err = %v, want Forbidden", err)
	}

	// The admission policy: cluster admins too, unless break-glass.
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if k := applyAdmissionPolicies(t, e.admin, filepath.Join(root, "manifests", "overlays", "sim")); k != 2 {
		t.Fatalf("the install has %d admission policy objects, want the revocation policy and its binding", k)
	}
	// The API server takes the policy up within a few seconds; a dry-run
	// delete goes through admission without deleting.
	dry := metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}
	if !kubetest.WaitFor(ctx, 60*time.Second, func() bool { return apierrors.IsForbidden(adm.Delete(ctx, name, dry)) }) {
		t.Fatalf("the admission policy does not refuse an admin's (dry-run) delete: %v", adm.Delete(ctx, name, dry))
	}
	err = adm.Delete(ctx, name, metav1.DeleteOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), breakGlassGroup) {
		t.Fatalf("a cluster admin deletes a NodeRevocation: err = %v, want Forbidden naming %s", err, breakGlassGroup)
	}
	t.Logf("admin's delete: %v", err)
	if err := adm.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("a cluster admin deletes all NodeRevocations: err = %v, want Forbidden", err)
	}
	if err := relabel(adm); !apierrors.IsForbidden(err) {
		t.Fatalf("a cluster admin updates a NodeRevocation: err = %v, want Forbidden", err)
	}
	if _, revoked, err := s.Revoked(n.ChipID); err != nil || !revoked {
		t.Fatalf("after the refused deletes the chip is revoked = %v (%v), want true", revoked, err)
	}
	// Recording more revocations is untouched.
	m := storetest.Node("web-2", "10.244.6.0/24")
	m.ChipID = []byte("another chip, another revocation")
	if _, err := s.PutNode(m); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RevokeNode("web-2", time.Now()); err != nil {
		t.Fatalf("the control plane cannot record a revocation under the policy: %v", err)
	}

	// Break glass.
	if err := relabel(bg); err != nil {
		t.Fatalf("a member of %s updates a NodeRevocation: %v", breakGlassGroup, err)
	}
	if err := bg.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("a member of %s deletes a NodeRevocation: %v", breakGlassGroup, err)
	}
	if _, err := bg.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the deleted revocation: %v, want NotFound", err)
	}
	if _, revoked, err := s.Revoked(n.ChipID); err != nil || revoked {
		t.Fatalf("after break-glass deletion the chip is revoked = %v (%v), want false", revoked, err)
	}
	var left *unstructured.UnstructuredList
	if left, err = cp.List(ctx, metav1.ListOptions{}); err != nil || len(left.Items) != 1 {
		t.Fatalf("revocations left: %v, %v; want web-2's", left, err)
	}

	// An uninstall (`kubectl delete -k` deletes the CRD) is not held up by
	// the policy: the CRD's instances go with it.
	crds := e.dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	crd := kubestore.RevocationsGVR.Resource + "." + kubestore.Group
	if err := crds.Delete(ctx, crd, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !kubetest.WaitFor(ctx, 60*time.Second, func() bool { _, err := crds.Get(ctx, crd, metav1.GetOptions{}); return apierrors.IsNotFound(err) }) {
		u, _ := crds.Get(ctx, crd, metav1.GetOptions{})
		t.Fatalf("the CRD with a revocation left is not deleted within 60 s under the policy: %v", u.Object["status"])
	}
}
