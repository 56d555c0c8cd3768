package ovmf_test

import (
	"testing"

	"github.com/confmesh/confmesh/internal/measure/measuretest"
	"github.com/confmesh/confmesh/internal/measure/ovmf"
)

// FuzzParseTable: an OVMF image of any shape gets its footer table or an
// error, never a panic.
func FuzzParseTable(f *testing.F) {
	f.Add(measuretest.AmdSevImage(0x4000, "fuzz").Build())
	f.Add(measuretest.OvmfX64Image(0x4000, "fuzz").Build())
	f.Fuzz(func(t *testing.T, image []byte) {
		ovmf.ParseTable(image)
	})
}
