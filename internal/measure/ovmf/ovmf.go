// Package ovmf reads the GUIDed footer table that OVMF and TDVF firmware
// images carry just before their reset vector: a list of (GUID, data)
// entries that say where the SEV metadata, the TDX metadata, the SEV-ES
// AP reset address and the kernel-hashes table live. Both confidential
// launch measurements (SEV-SNP and TDX) start from it.
//
// Layout (edk2 OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm): the table
// ends 32 bytes before the end of the image with a footer entry whose GUID
// is FooterGUID and whose size covers the whole table. Each entry is its
// data, then a little-endian uint16 size (data + 18), then the 16-byte
// GUID; entries are read from the end towards the start.
package ovmf

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is a GUID in the mixed-endian byte order EFI stores it in.
type GUID [16]byte

// MustGUID parses the canonical text form ("96b582de-1fb2-...") into the
// EFI byte order. It panics on a malformed constant.
func MustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// ParseGUID parses the canonical text form into the EFI byte order: the
// first three groups little-endian, the last two as written.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("GUID %q: want 8-4-4-4-12 hex digits", s)
	}
	raw, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g, nil
}

// String renders the canonical text form.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]),
		binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

// GUIDs of the footer table and of the entries the measurements use.
var (
	// FooterGUID marks the footer entry that closes the table.
	FooterGUID = MustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	// SEVMetadataGUID: a uint32 offset, from the end of the image, of the
	// SEV metadata ("ASEV") that lists the pages SEV-SNP launch measures.
	SEVMetadataGUID = MustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
	// SEVESResetBlockGUID: the uint32 reset address of the application
	// processors of an SEV-ES/SNP guest.
	SEVESResetBlockGUID = MustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	// SEVHashTableGUID: uint32 GPA and size of the area where the VMM
	// places the kernel, initrd and command-line hashes.
	SEVHashTableGUID = MustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
	// TDXMetadataGUID: a uint32 offset, from the end of the image, of the
	// TDVF metadata descriptor ("TDVF").
	TDXMetadataGUID = MustGUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
)

// footerOffset is where the footer entry ends: 32 bytes before the end of
// the image (the reset vector and alignment follow it).
const footerOffset = 32

// entryHeader is an entry's uint16 size and GUID, after its data.
const entryHeader = 2 + 16

// Table is the parsed footer table: each entry's data by GUID.
type Table map[GUID][]byte

// ParseTable reads the footer table of a firmware image. An image without
// the footer GUID in place is an error naming it; an entry whose size runs
// outside the table is an error too.
func ParseTable(image []byte) (Table, error) {
	if len(image) < footerOffset+entryHeader {
		return nil, fmt.Errorf("firmware image of %d bytes is too small to hold an OVMF footer table", len(image))
	}
	end := len(image) - footerOffset // the footer entry ends here
	var guid GUID
	copy(guid[:], image[end-16:end])
	if guid != FooterGUID {
		return nil, fmt.Errorf("no OVMF footer table: GUID %s not found %d bytes before the end of the image (not an OVMF/TDVF image?)", FooterGUID, footerOffset)
	}
	size := int(binary.LittleEndian.Uint16(image[end-entryHeader:]))
	tableLen := size - entryHeader
	if tableLen < 0 || tableLen > end-entryHeader {
		return nil, fmt.Errorf("OVMF footer table: size %d is out of range", size)
	}
	table := image[end-entryHeader-tableLen : end-entryHeader]
	out := Table{}
	for len(table) > 0 {
		if len(table) < entryHeader {
			return nil, fmt.Errorf("OVMF footer table: %d stray bytes before the first entry", len(table))
		}
		n := int(binary.LittleEndian.Uint16(table[len(table)-entryHeader:]))
		if n < entryHeader || n > len(table) {
			return nil, fmt.Errorf("OVMF footer table: entry of size %d does not fit (%d bytes left)", n, len(table))
		}
		copy(guid[:], table[len(table)-16:])
		if _, dup := out[guid]; dup {
			return nil, fmt.Errorf("OVMF footer table: entry %s appears twice", guid)
		}
		out[guid] = table[len(table)-n : len(table)-entryHeader]
		table = table[:len(table)-n]
	}
	return out, nil
}

// Uint32 returns the little-endian uint32 at the start of the entry g.
func (t Table) Uint32(g GUID, what string) (uint32, error) {
	d, ok := t[g]
	if !ok {
		return 0, fmt.Errorf("OVMF footer table has no %s entry (GUID %s)", what, g)
	}
	if len(d) < 4 {
		return 0, fmt.Errorf("OVMF footer table: %s entry holds %d bytes, want at least 4", what, len(d))
	}
	return binary.LittleEndian.Uint32(d), nil
}

// Entry is one footer table entry, for building images.
type Entry struct {
	GUID GUID
	Data []byte
}

// BuildTable renders entries as a footer table, the footer entry last, so
// that it ends footerOffset bytes before the end of an image. Tests and the
// simulated TEE build synthetic firmware images with it.
func BuildTable(entries []Entry) []byte {
	var out []byte
	for _, e := range entries {
		out = append(out, e.Data...)
		out = binary.LittleEndian.AppendUint16(out, uint16(len(e.Data)+entryHeader))
		out = append(out, e.GUID[:]...)
	}
	out = binary.LittleEndian.AppendUint16(out, uint16(len(out)+entryHeader))
	return append(out, FooterGUID[:]...)
}

// PlaceTable writes a built table into image so that it ends footerOffset
// bytes before the end. It panics when the image is too small: it is for
// building test images.
func PlaceTable(image, table []byte) {
	copy(image[len(image)-footerOffset-len(table):], table)
}
