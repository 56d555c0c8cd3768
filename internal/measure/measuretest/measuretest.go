// Package measuretest builds small synthetic firmware images in the OVMF
// (SEV-SNP) and TDVF (TDX) formats: a valid footer table and metadata over
// deterministic contents, so measurement tests and the simulated TEEs'
// round trips need no multi-megabyte firmware fixtures. The same spec
// always yields the same bytes, which is what lets a test pin the digest
// an independent implementation computed for the image.
package measuretest

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/confmesh/confmesh/internal/measure/ovmf"
)

// Fill returns n deterministic pseudo-random bytes derived from seed:
// SHA-256(seed || uint32 counter) blocks.
func Fill(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	for i := uint32(0); len(out) < n; i++ {
		h := sha256.Sum256(binary.LittleEndian.AppendUint32([]byte(seed), i))
		out = append(out, h[:]...)
	}
	return out[:n]
}

// SNPSection is one SEV metadata section.
type SNPSection struct{ GPA, Size, Type uint32 }

// SNPImage describes a synthetic OVMF image.
type SNPImage struct {
	Size     int    // bytes, a multiple of 4096
	Seed     string // contents
	ResetEIP uint32 // SEV-ES reset block (AP reset address); 0: no entry
	// HashTableGPA and HashTableSize are the SEV hash table entry; no
	// entry when HashTableGPA is 0.
	HashTableGPA, HashTableSize uint32
	Sections                    []SNPSection
	// NoMetadata leaves out the SEV metadata entry (an OVMF without SNP).
	NoMetadata bool
}

// snpMetadataFromEnd is where the "ASEV" metadata starts, counted from the
// end of the image (as OVMF's own offset is).
const snpMetadataFromEnd = 0x800

// Build renders the image: contents from Seed, the "ASEV" metadata
// 0x800 bytes before the end, the footer table ending 32 bytes before it.
func (s SNPImage) Build() []byte {
	img := Fill(s.Seed, s.Size)
	meta := []byte("ASEV")
	meta = binary.LittleEndian.AppendUint32(meta, uint32(16+12*len(s.Sections)))
	meta = binary.LittleEndian.AppendUint32(meta, 1)
	meta = binary.LittleEndian.AppendUint32(meta, uint32(len(s.Sections)))
	for _, sec := range s.Sections {
		meta = binary.LittleEndian.AppendUint32(meta, sec.GPA)
		meta = binary.LittleEndian.AppendUint32(meta, sec.Size)
		meta = binary.LittleEndian.AppendUint32(meta, sec.Type)
	}
	copy(img[len(img)-snpMetadataFromEnd:], meta)
	var entries []ovmf.Entry
	if s.ResetEIP != 0 {
		entries = append(entries, ovmf.Entry{GUID: ovmf.SEVESResetBlockGUID, Data: binary.LittleEndian.AppendUint32(nil, s.ResetEIP)})
	}
	if s.HashTableGPA != 0 {
		d := binary.LittleEndian.AppendUint32(nil, s.HashTableGPA)
		entries = append(entries, ovmf.Entry{GUID: ovmf.SEVHashTableGUID, Data: binary.LittleEndian.AppendUint32(d, s.HashTableSize)})
	}
	if !s.NoMetadata {
		entries = append(entries, ovmf.Entry{GUID: ovmf.SEVMetadataGUID, Data: binary.LittleEndian.AppendUint32(nil, snpMetadataFromEnd)})
	}
	ovmf.PlaceTable(img, ovmf.BuildTable(entries))
	return img
}

// AmdSevSections is the SEV metadata of edk2-stable202405's AmdSevX64
// build (OvmfPkg/AmdSev), as sev-snp-measure's fixture
// tests/fixtures/ovmf_AmdSev_suffix.bin lists it: SNP_SEC_MEM
// 0x800000+0x9000 and 0x80a000+0x3000, SNP_SECRETS 0x80d000, CPUID
// 0x80e000, SVSM_CAA 0x80f000, SNP_KERNEL_HASHES 0x810000, SNP_SEC_MEM
// 0x811000+0xf000. Its footer table has the AP reset address 0x80b004 and
// the hash table at 0x810c00 (0x400 bytes).
func AmdSevImage(size int, seed string) SNPImage {
	return SNPImage{
		Size: size, Seed: seed, ResetEIP: 0x80b004, HashTableGPA: 0x810c00, HashTableSize: 0x400,
		Sections: []SNPSection{
			{0x800000, 0x9000, 1}, {0x80a000, 0x3000, 1}, {0x80d000, 0x1000, 2}, {0x80e000, 0x1000, 3},
			{0x80f000, 0x1000, 4}, {0x810000, 0x1000, 0x10}, {0x811000, 0xf000, 1},
		},
	}
}

// OvmfX64Image is the layout of edk2-stable202405's standard OvmfX64
// build (sev-snp-measure's tests/fixtures/ovmf_OvmfX64_suffix.bin): the
// same sections but no kernel hashes (SNP_SEC_MEM 0x810000+0x10000 in its
// place) and a zero hash table address.
func OvmfX64Image(size int, seed string) SNPImage {
	return SNPImage{
		Size: size, Seed: seed, ResetEIP: 0x80b004,
		Sections: []SNPSection{
			{0x800000, 0x9000, 1}, {0x80a000, 0x3000, 1}, {0x80d000, 0x1000, 2}, {0x80e000, 0x1000, 3},
			{0x80f000, 0x1000, 4}, {0x810000, 0x10000, 1},
		},
	}
}

// TDVFSection is one TDVF metadata section (TDVF design guide, "TDVF
// metadata").
type TDVFSection struct {
	DataOffset, RawDataSize uint32
	MemoryAddress           uint64
	MemoryDataSize          uint64
	Type, Attributes        uint32
}

// TDVFImage describes a synthetic TDVF image.
type TDVFImage struct {
	Size     int
	Seed     string
	Sections []TDVFSection
	// NoFooter leaves out the OVMF footer table and points at the
	// descriptor from 0x20 bytes before the end instead, as td-shim does.
	NoFooter bool
}

// tdvfMetadataGUID precedes the "TDVF" descriptor in OVMF and td-shim.
var tdvfMetadataGUID = ovmf.MustGUID("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")

// tdvfDescriptorFromEnd is where the "TDVF" descriptor starts, counted
// from the end of the image.
const tdvfDescriptorFromEnd = 0x700

// Build renders the image: contents from Seed, the metadata GUID and the
// "TDVF" descriptor 0x700 bytes before the end, the footer table (with the
// TDX metadata offset entry) ending 32 bytes before it.
func (s TDVFImage) Build() []byte {
	img := Fill(s.Seed, s.Size)
	d := append([]byte(nil), tdvfMetadataGUID[:]...)
	d = append(d, "TDVF"...)
	d = binary.LittleEndian.AppendUint32(d, uint32(16+32*len(s.Sections)))
	d = binary.LittleEndian.AppendUint32(d, 1)
	d = binary.LittleEndian.AppendUint32(d, uint32(len(s.Sections)))
	for _, sec := range s.Sections {
		d = binary.LittleEndian.AppendUint32(d, sec.DataOffset)
		d = binary.LittleEndian.AppendUint32(d, sec.RawDataSize)
		d = binary.LittleEndian.AppendUint64(d, sec.MemoryAddress)
		d = binary.LittleEndian.AppendUint64(d, sec.MemoryDataSize)
		d = binary.LittleEndian.AppendUint32(d, sec.Type)
		d = binary.LittleEndian.AppendUint32(d, sec.Attributes)
	}
	copy(img[len(img)-tdvfDescriptorFromEnd-16:], d)
	if s.NoFooter {
		binary.LittleEndian.PutUint32(img[len(img)-0x20:], uint32(len(img)-tdvfDescriptorFromEnd))
		return img
	}
	ovmf.PlaceTable(img, ovmf.BuildTable([]ovmf.Entry{
		{GUID: ovmf.TDXMetadataGUID, Data: binary.LittleEndian.AppendUint32(nil, tdvfDescriptorFromEnd)},
	}))
	return img
}

// SmallTDVF is a 64 KiB TDVF image laid out like OVMF's IntelTdx build in
// miniature: a configuration volume (CFV, measured page by page with
// MR.EXTEND), the boot firmware volume (BFV, MR.EXTEND, holding the
// metadata and reset vector), the TD HOB and temporary memory (added,
// not extended), and permanent memory accepted later (PAGE.AUG: not
// measured).
func SmallTDVF(seed string) TDVFImage {
	return TDVFImage{
		Size: 0x10000, Seed: seed,
		Sections: []TDVFSection{
			{DataOffset: 0, RawDataSize: 0x2000, MemoryAddress: 0xffff0000, MemoryDataSize: 0x2000, Type: 1, Attributes: 1},
			{DataOffset: 0x2000, RawDataSize: 0xe000, MemoryAddress: 0xffff2000, MemoryDataSize: 0xe000, Type: 0, Attributes: 1},
			{MemoryAddress: 0x809000, MemoryDataSize: 0x2000, Type: 2},
			{MemoryAddress: 0x80b000, MemoryDataSize: 0x3000, Type: 3},
			{MemoryAddress: 0x900000, MemoryDataSize: 0x4000, Type: 4, Attributes: 2},
		},
	}
}
