// Package tdx computes the MRTD an Intel TDX trust domain booted from a
// TDVF firmware image (OVMF's IntelTdx build, or td-shim) reports: the
// build-time measurement the TDX module accumulates while the VMM adds the
// firmware's pages, computed from the published image instead of copied
// from a running node. Pure computation: no I/O.
//
// The TDX module keeps one SHA-384 context per TD. TDH.MEM.PAGE.ADD feeds
// it a 128-byte block ("MEM.PAGE.ADD", then the page's GPA at offset 16);
// TDH.MR.EXTEND feeds a 128-byte block ("MR.EXTEND", the chunk's GPA at
// offset 16) followed by the 256-byte chunk; TDH.MR.FINALIZE ends it. The
// VMM adds the sections the TDVF metadata lists, page by page in metadata
// order, each page added and then (for sections with the MR_EXTEND
// attribute) extended in 256-byte chunks, as QEMU/KVM's
// KVM_TDX_INIT_MEM_REGION does.
package tdx

import (
	"crypto/sha512"
	"encoding/binary"
	"fmt"

	"github.com/confmesh/confmesh/internal/measure/ovmf"
)

// Section types of the TDVF metadata (TDVF design guide; td-shim adds
// payload, payload parameters, TD info and TD params).
const (
	SectionBFV          = 0
	SectionCFV          = 1
	SectionTDHOB        = 2
	SectionTempMem      = 3
	SectionPermMem      = 4
	SectionPayload      = 5
	SectionPayloadParam = 6
	SectionTDInfo       = 7
	SectionTDParams     = 8
)

// Section attributes.
const (
	// AttrMRExtend: the section's contents are measured with TDH.MR.EXTEND.
	AttrMRExtend = 0x1
	// AttrPageAug: the pages are added after launch (TDH.MEM.PAGE.AUG) and
	// not measured into MRTD.
	AttrPageAug = 0x2
)

const (
	pageSize          = 0x1000
	extendGranularity = 0x100
	maxSections       = 1024
	// maxMeasured bounds the memory the metadata may have added at build
	// time (a TDVF adds a few MiB; td-shim payloads tens of MiB), so a
	// corrupt descriptor is an error rather than hours of hashing.
	maxMeasured = 4 << 30
)

// metadataGUID precedes the "TDVF" descriptor (OVMF
// OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm, td-shim metadata).
var metadataGUID = ovmf.MustGUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")

// Section is one TDVF metadata section.
type Section struct {
	DataOffset     uint32 // where its raw data starts in the image
	RawDataSize    uint32
	MemoryAddress  uint64 // GPA
	MemoryDataSize uint64
	Type           uint32
	Attributes     uint32
}

// ParseMetadata finds the TDVF metadata descriptor (through the OVMF
// footer table's TDX metadata entry, or, in images without a footer
// table, through the offset TDVF keeps 0x20 bytes before the end) and
// returns its sections, checked the way the VMM checks them.
func ParseMetadata(image []byte) ([]Section, error) {
	if len(image) < 0x40 {
		return nil, fmt.Errorf("TDVF image of %d bytes is too small", len(image))
	}
	var desc int // offset of the "TDVF" descriptor
	if table, err := ovmf.ParseTable(image); err == nil {
		off, err := table.Uint32(ovmf.TDXMetadataGUID, "TDX metadata")
		if err != nil {
			return nil, fmt.Errorf("%w: this firmware has no TDX support (build OvmfPkg/IntelTdx)", err)
		}
		desc = len(image) - int(off)
		if off == 0 || int(off) > len(image) {
			return nil, fmt.Errorf("TDX metadata offset %d is outside the %d-byte image", off, len(image))
		}
	} else {
		// TDVF without an OVMF footer table (td-shim): a uint32 0x20
		// bytes before the end is the file offset of the descriptor.
		desc = int(binary.LittleEndian.Uint32(image[len(image)-0x20:]))
	}
	if desc < 16 || desc+16 > len(image) {
		return nil, fmt.Errorf("TDVF metadata descriptor at %d is outside the %d-byte image", desc, len(image))
	}
	var g ovmf.GUID
	copy(g[:], image[desc-16:desc])
	if g != metadataGUID {
		return nil, fmt.Errorf("TDVF metadata: GUID %s before the descriptor, want %s", g, metadataGUID)
	}
	d := image[desc:]
	if string(d[0:4]) != "TDVF" {
		return nil, fmt.Errorf("TDVF metadata descriptor: signature %q, want \"TDVF\"", d[0:4])
	}
	length := binary.LittleEndian.Uint32(d[4:])
	version := binary.LittleEndian.Uint32(d[8:])
	n := binary.LittleEndian.Uint32(d[12:])
	if version != 1 {
		return nil, fmt.Errorf("TDVF metadata version %d: only version 1 is known", version)
	}
	if n == 0 || n > maxSections || uint64(length) != 16+32*uint64(n) || uint64(desc)+uint64(length) > uint64(len(image)) {
		return nil, fmt.Errorf("TDVF metadata: %d sections in a %d-byte descriptor do not fit", n, length)
	}
	var out []Section
	var measured uint64
	for i := uint32(0); i < n; i++ {
		b := d[16+32*i:]
		s := Section{
			DataOffset:     binary.LittleEndian.Uint32(b),
			RawDataSize:    binary.LittleEndian.Uint32(b[4:]),
			MemoryAddress:  binary.LittleEndian.Uint64(b[8:]),
			MemoryDataSize: binary.LittleEndian.Uint64(b[16:]),
			Type:           binary.LittleEndian.Uint32(b[24:]),
			Attributes:     binary.LittleEndian.Uint32(b[28:]),
		}
		if err := s.check(len(image)); err != nil {
			return nil, fmt.Errorf("TDVF metadata section %d (type %d): %w", i, s.Type, err)
		}
		if s.Attributes&AttrPageAug == 0 {
			if measured += s.MemoryDataSize; measured > maxMeasured || s.MemoryDataSize > maxMeasured {
				return nil, fmt.Errorf("TDVF metadata: sections add more than %d GiB at build time; not a TDVF image", maxMeasured>>30)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func (s Section) check(imageLen int) error {
	switch {
	case s.Type > SectionTDParams:
		return fmt.Errorf("unknown section type")
	case s.Attributes&^(AttrMRExtend|AttrPageAug) != 0:
		return fmt.Errorf("unknown attributes %#x", s.Attributes)
	case s.MemoryAddress%pageSize != 0 || s.MemoryDataSize%pageSize != 0:
		return fmt.Errorf("GPA %#x size %#x are not whole pages", s.MemoryAddress, s.MemoryDataSize)
	case s.MemoryAddress+s.MemoryDataSize < s.MemoryAddress:
		return fmt.Errorf("GPA %#x size %#x wrap around", s.MemoryAddress, s.MemoryDataSize)
	case s.Type != SectionTDInfo && s.MemoryDataSize < uint64(s.RawDataSize):
		return fmt.Errorf("raw data (%#x bytes) larger than its memory (%#x)", s.RawDataSize, s.MemoryDataSize)
	case uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(imageLen):
		return fmt.Errorf("raw data %#x+%#x runs past the %d-byte image", s.DataOffset, s.RawDataSize, imageLen)
	case s.Attributes&AttrMRExtend != 0 && s.Attributes&AttrPageAug != 0:
		return fmt.Errorf("MR_EXTEND on a PAGE_AUG section: its pages are not added at build time")
	case s.Attributes&AttrMRExtend != 0 && uint64(s.RawDataSize) != s.MemoryDataSize:
		// The VMM zero-fills memory past the raw data; reference tools
		// would hash image bytes instead. No TDVF build does this, so
		// refuse rather than guess.
		return fmt.Errorf("MR_EXTEND section with %#x bytes of raw data for %#x bytes of memory", s.RawDataSize, s.MemoryDataSize)
	}
	return nil
}

// MRTD computes the 48-byte MRTD of a TD launched from the TDVF image.
func MRTD(image []byte) ([]byte, error) {
	sections, err := ParseMetadata(image)
	if err != nil {
		return nil, err
	}
	h := sha512.New384()
	var block [128]byte
	for _, s := range sections {
		if s.Attributes&AttrPageAug != 0 {
			continue
		}
		for page := uint64(0); page < s.MemoryDataSize; page += pageSize {
			block = [128]byte{}
			copy(block[:], "MEM.PAGE.ADD")
			binary.LittleEndian.PutUint64(block[16:], s.MemoryAddress+page)
			h.Write(block[:])
			if s.Attributes&AttrMRExtend == 0 {
				continue
			}
			for chunk := uint64(0); chunk < pageSize; chunk += extendGranularity {
				block = [128]byte{}
				copy(block[:], "MR.EXTEND")
				binary.LittleEndian.PutUint64(block[16:], s.MemoryAddress+page+chunk)
				h.Write(block[:])
				off := uint64(s.DataOffset) + page + chunk
				h.Write(image[off : off+extendGranularity])
			}
		}
	}
	return h.Sum(nil), nil
}
