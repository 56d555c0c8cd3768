package attest

import (
	"encoding/binary"
	"fmt"
)

// Product lines whose TCB_VERSION layout the verifier knows.
const (
	ProductMilan = "Milan"
	ProductGenoa = "Genoa"
	ProductTurin = "Turin"
)

// tcbLayout is where each component's security patch level sits in the 8
// bytes of a TCB_VERSION (little-endian, byte 0 is the lowest). fmc is -1
// for products without an FMC component.
type tcbLayout struct{ fmc, bootloader, tee, snp, microcode int }

// tcbLayouts follows the SEV-SNP firmware ABI: Milan and Genoa keep the
// bootloader, TEE, four reserved bytes, SNP and microcode; Turin keeps FMC,
// bootloader, TEE, SNP, three reserved bytes and microcode. Decoding a Turin
// TCB with the Milan layout reads its bootloader as the TEE and a reserved
// byte as SNP, so every decode names its product.
var tcbLayouts = map[string]tcbLayout{
	ProductMilan: {fmc: -1, bootloader: 0, tee: 1, snp: 6, microcode: 7},
	ProductGenoa: {fmc: -1, bootloader: 0, tee: 1, snp: 6, microcode: 7},
	ProductTurin: {fmc: 0, bootloader: 1, tee: 2, snp: 3, microcode: 7},
}

// TCBParts are the security patch levels of a TCB's components. FMC exists
// only on Turin; it is zero elsewhere.
type TCBParts struct {
	FMC        uint8 `json:"fmc"`
	Bootloader uint8 `json:"bootloader"`
	TEE        uint8 `json:"tee"`
	SNP        uint8 `json:"snp"`
	Microcode  uint8 `json:"microcode"`
}

// TCB is a TCB_VERSION decoded with the layout of the product that
// reported it.
type TCB struct {
	Raw uint64 `json:"raw"`
	// FMC is the FMC firmware's patch level, present only for products
	// that have one (Turin).
	FMC        *uint8 `json:"fmc,omitempty"`
	Bootloader uint8  `json:"bootloader"`
	TEE        uint8  `json:"tee"`
	SNP        uint8  `json:"snp"`
	Microcode  uint8  `json:"microcode"`
}

// Parts returns the components, FMC zero when the product has none.
func (t TCB) Parts() TCBParts {
	p := TCBParts{Bootloader: t.Bootloader, TEE: t.TEE, SNP: t.SNP, Microcode: t.Microcode}
	if t.FMC != nil {
		p.FMC = *t.FMC
	}
	return p
}

// String renders the components for logs and the CLI, FMC only where the
// product has one.
func (t TCB) String() string {
	s := fmt.Sprintf("bootloader=%d tee=%d snp=%d microcode=%d (0x%016x)", t.Bootloader, t.TEE, t.SNP, t.Microcode, t.Raw)
	if t.FMC != nil {
		s = fmt.Sprintf("fmc=%d ", *t.FMC) + s
	}
	return s
}

// HasFMC reports whether the product line's TCB has an FMC component.
func HasFMC(productLine string) bool {
	l, ok := tcbLayouts[productLine]
	return ok && l.fmc >= 0
}

// DecodeTCB splits a raw TCB_VERSION into its components with the layout of
// productLine (Milan, Genoa or Turin). An unknown product is an error: a
// guessed layout would check the wrong bytes.
func DecodeTCB(productLine string, raw uint64) (TCB, error) {
	l, ok := tcbLayouts[productLine]
	if !ok {
		return TCB{}, fmt.Errorf("no TCB layout known for product line %q", productLine)
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], raw)
	t := TCB{Raw: raw, Bootloader: b[l.bootloader], TEE: b[l.tee], SNP: b[l.snp], Microcode: b[l.microcode]}
	if l.fmc >= 0 {
		fmc := b[l.fmc]
		t.FMC = &fmc
	}
	return t, nil
}

// EncodeTCB builds the raw TCB_VERSION of productLine from its components
// (reserved bytes zero). Every part but microcode must be 0-127, as the KDS
// certificate extensions require; a non-zero FMC for a product without one
// is an error.
func EncodeTCB(productLine string, p TCBParts) (uint64, error) {
	l, ok := tcbLayouts[productLine]
	if !ok {
		return 0, fmt.Errorf("no TCB layout known for product line %q", productLine)
	}
	for _, part := range []struct {
		name string
		v    uint8
	}{{"fmc", p.FMC}, {"bootloader", p.Bootloader}, {"tee", p.TEE}, {"snp", p.SNP}} {
		if part.v > 127 {
			return 0, fmt.Errorf("TCB %s %d exceeds 127", part.name, part.v)
		}
	}
	var b [8]byte
	if l.fmc >= 0 {
		b[l.fmc] = p.FMC
	} else if p.FMC != 0 {
		return 0, fmt.Errorf("TCB fmc %d: %s has no FMC component (only Turin does)", p.FMC, productLine)
	}
	b[l.bootloader], b[l.tee], b[l.snp], b[l.microcode] = p.Bootloader, p.TEE, p.SNP, p.Microcode
	return binary.LittleEndian.Uint64(b[:]), nil
}
