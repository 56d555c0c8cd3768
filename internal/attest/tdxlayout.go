package attest

import (
	"encoding/binary"
	"fmt"

	tdxabi "github.com/google/go-tdx-guest/abi"
)

// MaxTDXQuoteInput bounds a TDX quote as a quote-generation stack hands it
// over, zero padding included. Real quotes are 4-6 KiB (the PCK chain
// dominates) in buffers of 5006 bytes (QGS) to a few pages (configfs-tsm);
// anything larger is refused before a byte of it is parsed.
const MaxTDXQuoteInput = 64 << 10

// Offsets and sizes of the TDX quote layout (Intel TDX DCAP Quoting
// Library API, "Quote Format" v4 and v5).
const (
	tdxBodyV4Size       = 584 // TD quote body (TDX 1.0), also v5 body type 2
	tdxBodyV5TDX15Size  = 648 // v5 body type 3 (TDX 1.5)
	tdxV5DescriptorSize = 6   // v5 body type (u16) and body size (u32)
	tdxAuthFixedSize    = 128 // quote signature (64) and attestation key (64)
	tdxCertHeaderSize   = 6   // certification data type (u16) and size (u32)
	tdxQEReportSize     = 384 // the QE's SGX enclave report
	tdxQESignatureSize  = 64
	tdxQEAuthSizeField  = 2
	tdxCertTypeQEReport = 6 // certification data: QE report certification data
	tdxCertTypePCKChain = 5 // nested certification data: PCK chain (PEM)
)

// tdxQuoteLength walks the length fields of a TDX v4 or v5 quote, checking
// each against the bytes that are there, and returns the offset where its
// signed data ends: the quote's own length. go-tdx-guest's parser slices
// by these fields without checking them and panics on a quote that lies
// about them, so no byte reaches it before this walk has passed.
//
// A length field that disagrees with the bytes is ErrMalformed; a field
// naming a layout confmesh does not parse is ErrMalformedReport.
func tdxQuoteLength(raw []byte) (int, error) {
	if len(raw) < tdxHeaderSize {
		return 0, fmt.Errorf("%w: %d bytes is shorter than a TDX quote header", ErrMalformedReport, len(raw))
	}
	at := tdxHeaderSize
	switch v := binary.LittleEndian.Uint16(raw[0:2]); v {
	case tdxabi.QuoteVersionV4:
		at += tdxBodyV4Size
	case tdxabi.QuoteVersionV5:
		if len(raw) < at+tdxV5DescriptorSize {
			return 0, fmt.Errorf("%w: %d-byte v5 quote ends inside its body descriptor", ErrMalformed, len(raw))
		}
		typ := binary.LittleEndian.Uint16(raw[at:])
		size := binary.LittleEndian.Uint32(raw[at+2:])
		want := uint32(0)
		switch typ {
		case 2:
			want = tdxBodyV4Size
		case 3:
			want = tdxBodyV5TDX15Size
		default:
			return 0, fmt.Errorf("%w: v5 quote body type %d is not a TD quote body (2: TDX 1.0, 3: TDX 1.5)", ErrMalformedReport, typ)
		}
		if size != want {
			return 0, fmt.Errorf("%w: v5 quote body type %d claims %d bytes, that body is %d", ErrMalformed, typ, size, want)
		}
		at += tdxV5DescriptorSize + int(want)
	default:
		return 0, fmt.Errorf("%w: TDX quote version %d (supported 4 and 5)", ErrUnsupportedVersion, v)
	}
	if len(raw) < at+4 {
		return 0, fmt.Errorf("%w: %d-byte quote ends inside its body (the signed data length is at offset %d)", ErrMalformed, len(raw), at)
	}
	signed := uint64(binary.LittleEndian.Uint32(raw[at:]))
	at += 4
	if avail := uint64(len(raw) - at); signed > avail {
		return 0, fmt.Errorf("%w: signed data claims %d bytes, %d follow", ErrMalformed, signed, avail)
	}
	if signed < tdxAuthFixedSize+tdxCertHeaderSize {
		return 0, fmt.Errorf("%w: signed data claims %d bytes, too few for the quote signature, attestation key and certification data header (%d)",
			ErrMalformed, signed, tdxAuthFixedSize+tdxCertHeaderSize)
	}
	end := at + int(signed)
	if err := checkTDXCertificationData(raw[at+tdxAuthFixedSize : end]); err != nil {
		return 0, err
	}
	return end, nil
}

// checkTDXCertificationData checks the certification data in a quote's
// signed data: its size field, the QE report certification data (QE
// report, signature, QE authentication data) and the PCK chain inside it.
func checkTDXCertificationData(b []byte) error {
	if typ := binary.LittleEndian.Uint16(b); typ != tdxCertTypeQEReport {
		return fmt.Errorf("%w: certification data type %d, want %d (QE report certification data)", ErrMalformedReport, typ, tdxCertTypeQEReport)
	}
	size := uint64(binary.LittleEndian.Uint32(b[2:]))
	qe := b[tdxCertHeaderSize:]
	if size != uint64(len(qe)) {
		return fmt.Errorf("%w: certification data claims %d bytes, the signed data leaves %d", ErrMalformed, size, len(qe))
	}
	fixed := tdxQEReportSize + tdxQESignatureSize + tdxQEAuthSizeField
	if len(qe) < fixed+tdxCertHeaderSize {
		return fmt.Errorf("%w: QE report certification data is %d bytes, too few for the QE report, its signature, authentication data and the PCK chain header (%d)",
			ErrMalformed, len(qe), fixed+tdxCertHeaderSize)
	}
	auth := int(binary.LittleEndian.Uint16(qe[fixed-tdxQEAuthSizeField:]))
	pck := qe[fixed:]
	if auth+tdxCertHeaderSize > len(pck) {
		return fmt.Errorf("%w: QE authentication data claims %d bytes, %d remain for it and the PCK chain header", ErrMalformed, auth, len(pck))
	}
	pck = pck[auth:]
	if typ := binary.LittleEndian.Uint16(pck); typ != tdxCertTypePCKChain {
		return fmt.Errorf("%w: QE certification data type %d, want %d (PCK certificate chain)", ErrMalformedReport, typ, tdxCertTypePCKChain)
	}
	if n := uint64(binary.LittleEndian.Uint32(pck[2:])); n != uint64(len(pck)-tdxCertHeaderSize) {
		return fmt.Errorf("%w: PCK certificate chain claims %d bytes, the certification data leaves %d", ErrMalformed, n, len(pck)-tdxCertHeaderSize)
	}
	return nil
}

// TrimTDXQuote returns raw without the zero padding quote-generation
// stacks leave after the quote (they hand it over in a fixed-size buffer),
// after checking the quote's length fields. Any non-zero byte after the
// signed data is ErrTrailingData; input over MaxTDXQuoteInput is refused
// before it is read. The configfs-tsm provider trims what it reads, so
// peers never see padding.
func TrimTDXQuote(raw []byte) ([]byte, error) {
	if len(raw) > MaxTDXQuoteInput {
		return nil, fmt.Errorf("%w: %d bytes is more than the %d a TDX quote may take, padding included", ErrMalformedReport, len(raw), MaxTDXQuoteInput)
	}
	end, err := tdxQuoteLength(raw)
	if err != nil {
		return nil, err
	}
	for i, c := range raw[end:] {
		if c != 0 {
			return nil, fmt.Errorf("%w: non-zero byte %#02x at offset %d of %d; the quote's signed data ends at offset %d and only zero padding may follow it",
				ErrTrailingData, c, end+i, len(raw), end)
		}
	}
	return raw[:end], nil
}
