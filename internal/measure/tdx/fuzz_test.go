package tdx_test

import (
	"testing"

	"github.com/confmesh/confmesh/internal/measure/measuretest"
	"github.com/confmesh/confmesh/internal/measure/tdx"
)

// FuzzMRTD: a firmware image of any shape gets an MRTD or an error, never
// a panic or an unbounded allocation (the image is the operator's file,
// and `measure tdx` is also run on images downloaded from elsewhere).
func FuzzMRTD(f *testing.F) {
	f.Add(measuretest.SmallTDVF("fuzz").Build())
	noFooter := measuretest.SmallTDVF("fuzz-nofooter")
	noFooter.NoFooter = true
	f.Add(noFooter.Build())
	f.Fuzz(func(t *testing.T, image []byte) {
		if _, err := tdx.ParseMetadata(image); err != nil {
			return
		}
		tdx.MRTD(image)
	})
}
