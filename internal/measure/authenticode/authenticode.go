// Package authenticode computes the Authenticode digest of a PE/COFF image
// the way UEFI firmware measures an EFI application it loads (EDK2's
// MeasurePeImageAndExtend, which OVMF's TDX and TPM measured-boot drivers
// share): the PE/COFF specification's "Calculating the PE Image Hash".
// Pure computation: no I/O.
//
// The digest covers the headers except the optional header's CheckSum and
// the Certificate Table data-directory entry, then each section's raw data
// in file order (sorted by PointerToRawData, empty sections skipped), then
// whatever follows the last section except the certificate table (the
// attribute certificates a signature appends). Signing an image therefore
// leaves its digest unchanged. Unlike signing tools, the firmware does not
// pad the hashed data to a multiple of 8 bytes.
package authenticode

import (
	"encoding/binary"
	"fmt"
	"hash"
	"sort"
)

// Header offsets and sizes (PE/COFF specification).
const (
	dosLfanew         = 0x3c
	coffHeaderSize    = 20
	sectionHeaderSize = 40
	magicPE32         = 0x10b
	magicPE32Plus     = 0x20b
	// Optional-header offsets.
	optSizeOfHeaders = 60
	optCheckSum      = 64
	// securityDirectory is the Certificate Table's data-directory index.
	securityDirectory = 4
	maxSections       = 96 // the PE/COFF limit the Windows loader enforces
)

// Hash returns the Authenticode digest of the PE/COFF image img with the
// hash newHash makes (sha512.New384 for a TDX measurement). A malformed
// image is an error naming what is wrong, never a digest.
func Hash(img []byte, newHash func() hash.Hash) (digest []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			digest, err = nil, fmt.Errorf("PE/COFF image: malformed header (%v)", r)
		}
	}()
	size := uint64(len(img))
	u16 := func(off uint64) uint16 { return binary.LittleEndian.Uint16(img[off:]) }
	u32 := func(off uint64) uint32 { return binary.LittleEndian.Uint32(img[off:]) }
	if size < 0x40 {
		return nil, fmt.Errorf("PE/COFF image of %d bytes is too small", size)
	}
	// A DOS stub is optional to the firmware (EDK2 accepts a bare PE header).
	var pe uint64
	if string(img[0:2]) == "MZ" {
		pe = uint64(u32(dosLfanew))
	}
	if pe+4+coffHeaderSize > size || string(img[pe:pe+4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("not a PE/COFF image: no \"PE\\0\\0\" signature at offset %#x (an EFI-stub kernel is a bzImage built with CONFIG_EFI_STUB)", pe)
	}
	coff := pe + 4
	nSections := uint64(u16(coff + 2))
	optSize := uint64(u16(coff + 16))
	opt := coff + coffHeaderSize
	if optSize < 2 || opt+optSize > size {
		return nil, fmt.Errorf("PE/COFF optional header of %d bytes runs past the %d-byte image", optSize, size)
	}
	var numRvaOff, dirOff uint64
	switch m := u16(opt); m {
	case magicPE32:
		numRvaOff, dirOff = 92, 96
	case magicPE32Plus:
		numRvaOff, dirOff = 108, 112
	default:
		return nil, fmt.Errorf("PE/COFF optional header magic %#x: want %#x (PE32) or %#x (PE32+)", m, magicPE32, magicPE32Plus)
	}
	if optSize < numRvaOff+4 {
		return nil, fmt.Errorf("PE/COFF optional header of %d bytes is too short for its magic", optSize)
	}
	numRva := uint64(u32(opt + numRvaOff))
	if dirOff+8*numRva > optSize {
		return nil, fmt.Errorf("PE/COFF: %d data directories do not fit the %d-byte optional header", numRva, optSize)
	}
	sizeOfHeaders := uint64(u32(opt + optSizeOfHeaders))
	sectionTable := opt + optSize
	if nSections > maxSections {
		return nil, fmt.Errorf("PE/COFF: %d sections, more than %d", nSections, maxSections)
	}
	if sectionTable+nSections*sectionHeaderSize > size {
		return nil, fmt.Errorf("PE/COFF section table (%d sections) runs past the %d-byte image", nSections, size)
	}
	if sizeOfHeaders > size || sizeOfHeaders < opt+optCheckSum+4 {
		return nil, fmt.Errorf("PE/COFF SizeOfHeaders %#x is outside the %d-byte image or inside the optional header", sizeOfHeaders, size)
	}

	h := newHash()
	checksum := opt + optCheckSum
	h.Write(img[:checksum])
	var certSize uint64
	if numRva <= securityDirectory {
		h.Write(img[checksum+4 : sizeOfHeaders])
	} else {
		certDir := opt + dirOff + 8*securityDirectory
		if certDir+8 > sizeOfHeaders {
			return nil, fmt.Errorf("PE/COFF: the certificate table entry lies past SizeOfHeaders %#x", sizeOfHeaders)
		}
		h.Write(img[checksum+4 : certDir])
		h.Write(img[certDir+8 : sizeOfHeaders])
		certSize = uint64(u32(certDir + 4))
	}

	type section struct{ off, size uint64 }
	var sections []section
	for i := uint64(0); i < nSections; i++ {
		s := sectionTable + i*sectionHeaderSize
		raw := section{off: uint64(u32(s + 20)), size: uint64(u32(s + 16))}
		if raw.size == 0 {
			continue
		}
		if raw.off+raw.size > size {
			return nil, fmt.Errorf("PE/COFF section %d (%q): raw data %#x+%#x runs past the %d-byte image", i, sectionName(img[s:s+8]), raw.off, raw.size, size)
		}
		sections = append(sections, raw)
	}
	sort.SliceStable(sections, func(a, b int) bool { return sections[a].off < sections[b].off })
	hashed := sizeOfHeaders
	for _, s := range sections {
		h.Write(img[s.off : s.off+s.size])
		hashed += s.size
	}
	if size > hashed {
		switch {
		case size > hashed+certSize:
			h.Write(img[hashed : size-certSize])
		case size < hashed+certSize:
			return nil, fmt.Errorf("PE/COFF: a %d-byte certificate table does not fit after %d hashed bytes of a %d-byte image", certSize, hashed, size)
		}
	}
	return h.Sum(nil), nil
}

func sectionName(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
