package kdscert_test

import (
	"bytes"
	"crypto/x509"
	"testing"

	"github.com/confmesh/confmesh/internal/attest/kdscert"
	"github.com/google/go-sev-guest/abi"
)

// FuzzParse: a VCEK/VLEK certificate with any extensions (a peer ships it
// with its evidence) is read or refused, never a panic.
func FuzzParse(f *testing.F) {
	hw := bytes.Repeat([]byte{0xab}, 64)
	for _, e := range []*kdscert.Extensions{
		{StructVersion: 0, ProductName: "Milan-B1", HWID: hw, TCB: 0x0807060504030201},
		{StructVersion: 1, ProductName: "Turin-B0", HWID: hw[:8], TCB: 0x0800000004030201},
	} {
		f.Add(cert(f, encode(f, e)).Raw)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		kdscert.Parse(c, abi.VcekReportSigner)
		kdscert.Parse(c, abi.VlekReportSigner)
	})
}
