package memstore_test

import (
	"testing"

	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/controlplane/store/memstore"
	"github.com/confmesh/confmesh/controlplane/store/storetest"
)

// TestMemstoreContract runs the store contracts against memstore: one
// backend, one client per replica.
func TestMemstoreContract(t *testing.T) {
	opt := storetest.Options{UniquePodCIDR: true}
	storetest.Run(t, func(t *testing.T) store.Store {
		s := memstore.New().Open()
		t.Cleanup(func() { _ = s.Close() })
		return s
	}, opt)
	storetest.RunShared(t, func(t *testing.T) (store.Shared, store.Shared) {
		b := memstore.New()
		a, c := b.Open(), b.Open()
		t.Cleanup(func() { _ = a.Close(); _ = c.Close() })
		return a, c
	}, opt)
}
