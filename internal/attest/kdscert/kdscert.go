// Package kdscert reads and writes the AMD key distribution service (KDS)
// extensions of SEV-SNP endorsement certificates (VCEK, VLEK) in both
// published layouts (AMD publication #57230):
//
//   - structVersion 0 (family 19h: Milan, Genoa): a 64-byte hwID and the TCB
//     as blSPL, teeSPL, spl_4..spl_7, snpSPL, ucodeSPL (TCB bytes 0-7).
//   - structVersion 1 (family 1Ah: Turin): an 8-byte hwID and the TCB as
//     fmcSPL, blSPL, teeSPL, snpSPL, spl_5..spl_7, ucodeSPL (TCB bytes 0-7);
//     there is no spl_4.
//
// go-sev-guest v0.15.0 reads only structVersion 0 (its kds package refuses
// the fmcSPL extension and an hwID that is not 64 bytes), so version 0 is
// handed to it and version 1 is read here with the same strictness.
package kdscert

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
)

// HWID sizes per structVersion.
const (
	HWIDSizeV0 = abi.ChipIDSize // 64
	HWIDSizeV1 = 8
)

// OIDFmcSpl is the fmcSPL extension of structVersion 1 certificates
// (go-sev-guest v0.15.0 does not know it).
var OIDFmcSpl = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 9}

var oidAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}

// Extensions are the KDS extensions of one endorsement certificate.
type Extensions struct {
	// StructVersion is 0 (Milan, Genoa) or 1 (Turin).
	StructVersion uint8
	// ProductName is the productName1 extension ("Turin-B0"; a VLEK names
	// only the line).
	ProductName string
	// ProductLine is the product line the name denotes (Milan, Genoa, Turin).
	ProductLine string
	// HWID is the chip's hardware ID (VCEK only): 64 bytes for version 0,
	// 8 for version 1.
	HWID []byte
	// TCB is the certified TCB_VERSION, raw, in the layout of StructVersion.
	TCB uint64
	// CspID names the cloud provider of a VLEK.
	CspID string
}

// Parse reads cert's KDS extensions for signer. It refuses what AMD does not
// issue: an unknown extension (crypto/x509 already refuses duplicates), a
// missing field, an hwID of the
// wrong size for the version, a structVersion that does not match the
// product line (Turin is version 1, Milan and Genoa version 0).
func Parse(cert *x509.Certificate, signer abi.ReportSigner) (*Extensions, error) {
	if cert == nil {
		return nil, fmt.Errorf("no certificate")
	}
	var version int
	found := false
	for _, e := range cert.Extensions {
		if e.Id.Equal(kds.OidStructVersion) {
			if err := u8(e.Value, "structVersion", &version); err != nil {
				return nil, err
			}
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("no structVersion extension")
	}
	var out *Extensions
	var err error
	switch version {
	case 0:
		out, err = parseV0(cert, signer)
	case 1:
		out, err = parseV1(cert, signer)
	default:
		return nil, fmt.Errorf("structVersion %d is not one this verifier knows (0: Milan, Genoa; 1: Turin)", version)
	}
	if err != nil {
		return nil, err
	}
	product, err := kds.ParseProductName(out.ProductName, signer)
	if err != nil {
		return nil, fmt.Errorf("product %q: %w", out.ProductName, err)
	}
	out.ProductLine = kds.ProductLine(product)
	if want := versionOf(out.ProductLine); want != int(out.StructVersion) {
		return nil, fmt.Errorf("%s certificate with structVersion %d: AMD issues %s certificates with structVersion %d", out.ProductLine, out.StructVersion, out.ProductLine, want)
	}
	return out, nil
}

func versionOf(productLine string) int {
	if productLine == "Turin" {
		return 1
	}
	return 0
}

// parseV0 is go-sev-guest's reading, unchanged.
func parseV0(cert *x509.Certificate, signer abi.ReportSigner) (*Extensions, error) {
	e, err := kds.CertificateExtensions(cert, signer)
	if err != nil {
		return nil, err
	}
	return &Extensions{StructVersion: 0, ProductName: e.ProductName, HWID: e.HWID, TCB: uint64(e.TCBVersion), CspID: e.CspID}, nil
}

// v1Fields are the integer extensions of structVersion 1 and the TCB byte
// each fills.
var v1Fields = []struct {
	oid  asn1.ObjectIdentifier
	name string
	byte int
}{
	{OIDFmcSpl, "fmcSPL", 0},
	{kds.OidBlSpl, "blSPL", 1},
	{kds.OidTeeSpl, "teeSPL", 2},
	{kds.OidSnpSpl, "snpSPL", 3},
	{kds.OidSpl5, "spl_5", 4},
	{kds.OidSpl6, "spl_6", 5},
	{kds.OidSpl7, "spl_7", 6},
	{kds.OidUcodeSpl, "ucodeSPL", 7},
}

func parseV1(cert *x509.Certificate, signer abi.ReportSigner) (*Extensions, error) {
	if signer != abi.VcekReportSigner {
		return nil, fmt.Errorf("a structVersion 1 %v certificate: only Turin VCEKs are supported in this version", signer)
	}
	exts := map[string]pkix.Extension{}
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidAuthorityKeyID) {
			continue
		}
		if !known(e.Id) {
			return nil, fmt.Errorf("not an AMD KDS extension of a structVersion 1 VCEK: %v", e.Id)
		}
		exts[e.Id.String()] = e
	}
	out := &Extensions{StructVersion: 1}
	name, ok := exts[kds.OidProductName1.String()]
	if !ok || len(name.Value) == 0 || name.Value[0] != asn1.TagIA5String {
		return nil, fmt.Errorf("no productName1 extension (an IA5String)")
	}
	if rest, err := asn1.UnmarshalWithParams(name.Value, &out.ProductName, "ia5"); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("productName1 is not one IA5String")
	}
	var tcb [8]byte
	for _, f := range v1Fields {
		e, ok := exts[f.oid.String()]
		if !ok {
			return nil, fmt.Errorf("no %s extension", f.name)
		}
		var v int
		if err := u8(e.Value, f.name, &v); err != nil {
			return nil, err
		}
		tcb[f.byte] = byte(v)
	}
	for i, b := range tcb {
		out.TCB |= uint64(b) << (8 * i)
	}
	if _, ok := exts[kds.OidSpl4.String()]; ok {
		return nil, fmt.Errorf("spl_4 extension in a structVersion 1 VCEK (Turin has none)")
	}
	if _, ok := exts[kds.OidCspID.String()]; ok {
		return nil, fmt.Errorf("CSP_ID extension in a VCEK")
	}
	hw, ok := exts[kds.OidHwid.String()]
	if !ok {
		return nil, fmt.Errorf("no hwID extension in a VCEK")
	}
	hwid, err := octets(hw.Value, HWIDSizeV1)
	if err != nil {
		return nil, fmt.Errorf("hwID: %w", err)
	}
	out.HWID = hwid
	return out, nil
}

func known(id asn1.ObjectIdentifier) bool {
	for _, o := range []asn1.ObjectIdentifier{kds.OidStructVersion, kds.OidProductName1, kds.OidHwid, kds.OidCspID, kds.OidSpl4} {
		if id.Equal(o) {
			return true
		}
	}
	for _, f := range v1Fields {
		if id.Equal(f.oid) {
			return true
		}
	}
	return false
}

// u8 reads one DER INTEGER 0-255 and nothing after it.
func u8(der []byte, field string, out *int) error {
	rest, err := asn1.Unmarshal(der, out)
	if err != nil || len(rest) != 0 {
		return fmt.Errorf("%s is not one DER INTEGER", field)
	}
	if *out < 0 || *out > 255 {
		return fmt.Errorf("%s %d is not 0-255", field, *out)
	}
	return nil
}

// octets reads an hwID: KDS sends the bytes untagged; a DER OCTET STRING of
// the same size is accepted too, as go-sev-guest does.
func octets(v []byte, size int) ([]byte, error) {
	if len(v) == size {
		return append([]byte{}, v...), nil
	}
	var o []byte
	rest, err := asn1.Unmarshal(v, &o)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes, want %d (or a DER OCTET STRING of %d)", len(v), size, size)
	}
	if len(o) != size {
		return nil, fmt.Errorf("%d bytes, want %d", len(o), size)
	}
	return o, nil
}

// Encode writes the extensions in the layout of e.StructVersion: version 1
// with fmcSPL and an untagged 8-byte hwID as KDS issues Turin VCEKs, version
// 0 as go-sev-guest reads it. The TCB is split with the version's layout.
func Encode(e *Extensions) ([]pkix.Extension, error) {
	i := func(v byte) []byte { b, _ := asn1.Marshal(int(v)); return b }
	sv, _ := asn1.Marshal(int(e.StructVersion))
	name, err := asn1.MarshalWithParams(e.ProductName, "ia5")
	if err != nil {
		return nil, fmt.Errorf("productName1: %w", err)
	}
	var t [8]byte
	for n := range t {
		t[n] = byte(e.TCB >> (8 * n))
	}
	out := []pkix.Extension{{Id: kds.OidStructVersion, Value: sv}, {Id: kds.OidProductName1, Value: name}}
	switch e.StructVersion {
	case 0:
		for n, oid := range []asn1.ObjectIdentifier{kds.OidBlSpl, kds.OidTeeSpl, kds.OidSpl4, kds.OidSpl5, kds.OidSpl6, kds.OidSpl7, kds.OidSnpSpl, kds.OidUcodeSpl} {
			out = append(out, pkix.Extension{Id: oid, Value: i(t[n])})
		}
	case 1:
		for _, f := range v1Fields {
			out = append(out, pkix.Extension{Id: f.oid, Value: i(t[f.byte])})
		}
	default:
		return nil, fmt.Errorf("structVersion %d is not 0 or 1", e.StructVersion)
	}
	switch {
	case e.HWID != nil && e.CspID != "":
		return nil, fmt.Errorf("both hwID and CSP_ID")
	case e.HWID != nil:
		want := HWIDSizeV0
		if e.StructVersion == 1 {
			want = HWIDSizeV1
		}
		if len(e.HWID) != want {
			return nil, fmt.Errorf("hwID is %d bytes, structVersion %d wants %d", len(e.HWID), e.StructVersion, want)
		}
		v := append([]byte{}, e.HWID...)
		if e.StructVersion == 0 {
			v, _ = asn1.Marshal(e.HWID) // go-sev-guest's test certificates tag it
		}
		out = append(out, pkix.Extension{Id: kds.OidHwid, Value: v})
	case e.CspID != "":
		v, err := asn1.MarshalWithParams(e.CspID, "ia5")
		if err != nil {
			return nil, fmt.Errorf("CSP_ID: %w", err)
		}
		out = append(out, pkix.Extension{Id: kds.OidCspID, Value: v})
	}
	return out, nil
}

// String names the certificate for logs: product, version and hwID.
func (e *Extensions) String() string {
	return fmt.Sprintf("%s structVersion %d hwID %s", e.ProductName, e.StructVersion, hex.EncodeToString(e.HWID))
}
