package authenticode_test

import (
	"crypto/sha512"
	"testing"

	"github.com/confmesh/confmesh/internal/measure/authenticode"
	"github.com/confmesh/confmesh/internal/measure/measuretest"
)

// FuzzHash: a PE/COFF file of any shape gets its Authenticode digest or an
// error, never a panic.
func FuzzHash(f *testing.F) {
	f.Add(measuretest.Kernel("fuzz", 0x800).Build())
	f.Fuzz(func(t *testing.T, img []byte) {
		authenticode.Hash(img, sha512.New384)
	})
}
