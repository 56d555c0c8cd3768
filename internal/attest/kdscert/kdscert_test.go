package kdscert_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest/kdscert"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
)

var key *ecdsa.PrivateKey

func cert(t testing.TB, exts []pkix.Extension) *x509.Certificate {
	t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), ExtraExtensions: exts}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func encode(t testing.TB, e *kdscert.Extensions) []pkix.Extension {
	t.Helper()
	exts, err := kdscert.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	return exts
}

// TestRoundTrip: both layouts read back what was written; version 0 is
// also what go-sev-guest reads, version 1 is what it cannot.
func TestRoundTrip(t *testing.T) {
	hw64 := bytes.Repeat([]byte{0xab}, 64)
	v0 := &kdscert.Extensions{StructVersion: 0, ProductName: "Milan-B1", HWID: hw64, TCB: 0x0807060504030201}
	got, err := kdscert.Parse(cert(t, encode(t, v0)), abi.VcekReportSigner)
	if err != nil || got.ProductLine != "Milan" || got.TCB != v0.TCB || !bytes.Equal(got.HWID, hw64) {
		t.Fatalf("v0: %+v %v", got, err)
	}
	v1 := &kdscert.Extensions{StructVersion: 1, ProductName: "Turin-B0", HWID: hw64[:8], TCB: 0x0800000004030201}
	c := cert(t, encode(t, v1))
	got, err = kdscert.Parse(c, abi.VcekReportSigner)
	if err != nil || got.ProductLine != "Turin" || got.StructVersion != 1 || got.TCB != v1.TCB || !bytes.Equal(got.HWID, hw64[:8]) {
		t.Fatalf("v1: %+v %v", got, err)
	}
	if _, err := kds.VcekCertificateExtensions(c); err == nil {
		t.Error("go-sev-guest v0.15.0 reads a structVersion 1 VCEK: kdscert's own reading may be unneeded")
	}
	// fmcSPL is TCB byte 0 and ucodeSPL byte 7 in version 1.
	for _, e := range c.Extensions {
		var v int
		if e.Id.Equal(kdscert.OIDFmcSpl) {
			if _, err := asn1.Unmarshal(e.Value, &v); err != nil || v != 1 {
				t.Errorf("fmcSPL = %d, want 1", v)
			}
		}
		if e.Id.Equal(kds.OidUcodeSpl) {
			if _, err := asn1.Unmarshal(e.Value, &v); err != nil || v != 8 {
				t.Errorf("ucodeSPL = %d, want 8", v)
			}
		}
	}
	// A DER-tagged 8-byte hwID is read too.
	exts := encode(t, v1)
	for i := range exts {
		if exts[i].Id.Equal(kds.OidHwid) {
			exts[i].Value, _ = asn1.Marshal(hw64[:8])
		}
	}
	if got, err := kdscert.Parse(cert(t, exts), abi.VcekReportSigner); err != nil || !bytes.Equal(got.HWID, hw64[:8]) {
		t.Errorf("tagged hwID: %+v %v", got, err)
	}
}

// TestRefusals: certificates AMD does not issue.
func TestRefusals(t *testing.T) {
	v1 := func() []pkix.Extension {
		return encode(t, &kdscert.Extensions{StructVersion: 1, ProductName: "Turin-B0", HWID: make([]byte, 8)})
	}
	set := func(exts []pkix.Extension, oid asn1.ObjectIdentifier, v []byte) []pkix.Extension {
		for i := range exts {
			if exts[i].Id.Equal(oid) {
				exts[i].Value = v
			}
		}
		return exts
	}
	i := func(v int) []byte { b, _ := asn1.Marshal(v); return b }
	for _, c := range []struct {
		name   string
		exts   []pkix.Extension
		signer abi.ReportSigner
		want   string
	}{
		{"structVersion 2", set(v1(), kds.OidStructVersion, i(2)), abi.VcekReportSigner, "structVersion 2"},
		{"no structVersion", v1()[1:], abi.VcekReportSigner, "no structVersion"},
		{"SPL above 255", set(v1(), kds.OidBlSpl, i(256)), abi.VcekReportSigner, "blSPL 256"},
		{"SPL not an INTEGER", set(v1(), kds.OidTeeSpl, []byte{4, 1, 0}), abi.VcekReportSigner, "teeSPL is not one DER INTEGER"},
		{"product name not IA5", set(v1(), kds.OidProductName1, []byte{12, 2, 'T', 'u'}), abi.VcekReportSigner, "productName1"},
		{"unknown stepping", set(v1(), kds.OidProductName1, []byte{22, 8, 'T', 'u', 'r', 'i', 'n', '-', 'Z', '9'}), abi.VcekReportSigner, "unknown product name"},
		{"CSP_ID in a VCEK", append(v1(), pkix.Extension{Id: kds.OidCspID, Value: []byte{22, 1, 'x'}}), abi.VcekReportSigner, "CSP_ID"},
		{"version 1 VLEK", v1(), abi.VlekReportSigner, "only Turin VCEKs"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := kdscert.Parse(cert(t, c.exts), c.signer)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := kdscert.Encode(&kdscert.Extensions{StructVersion: 1, ProductName: "Turin-B0", HWID: make([]byte, 64)}); err == nil {
		t.Error("Encode wrote a 64-byte hwID into a structVersion 1 certificate")
	}
}
