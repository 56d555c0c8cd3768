package store_test

import (
	"path/filepath"
	"testing"

	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/controlplane/store/storetest"
)

// TestBoltContract runs the store contract against bolt.
func TestBoltContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenBolt(filepath.Join(t.TempDir(), "confmesh.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}, storetest.Options{ExactRevision: true})
}
