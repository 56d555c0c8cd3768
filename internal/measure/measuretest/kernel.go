package measuretest

import "encoding/binary"

// KernelImage describes a synthetic x86 EFI-stub kernel (a bzImage that
// is also a PE32+ image): DOS header, PE/COFF headers and a section table
// before the boot-protocol setup header at 0x1f1, as the Linux build lays
// them out, and two sections (.setup from 0x200, .text after it) over
// deterministic contents. It boots nothing; it has the fields QEMU patches
// and the headers an Authenticode hash walks.
type KernelImage struct {
	Seed      string
	TextSize  int    // bytes of .text; the file is 0x1000+TextSize bytes
	Protocol  uint16 // boot protocol version (0x20f when 0)
	XLoadFlag uint16 // xloadflags (0x236)
	// ReverseSections lists .text before .setup in the section table
	// (file order stays the same).
	ReverseSections bool
	// Trailer is appended after the last section (data a digest must still
	// cover: not a certificate table).
	Trailer []byte
}

// Offsets of the synthetic layout.
const (
	kernelPE      = 0x40
	kernelSetup   = 0x200
	kernelTextOff = 0x1000
)

// Kernel returns a KernelImage with a .text of size bytes.
func Kernel(seed string, size int) KernelImage {
	return KernelImage{Seed: seed, TextSize: size}
}

// Build renders the image.
func (k KernelImage) Build() []byte {
	img := append(Fill(k.Seed, kernelTextOff+k.TextSize), k.Trailer...)
	le16 := func(off int, v uint16) { binary.LittleEndian.PutUint16(img[off:], v) }
	le32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(img[off:], v) }
	clear(img[:kernelSetup+0x70])
	copy(img, "MZ")
	le32(0x3c, kernelPE)
	copy(img[kernelPE:], "PE\x00\x00")
	coff := kernelPE + 4
	le16(coff, 0x8664) // AMD64
	le16(coff+2, 2)    // sections
	const optSize = 112 + 16*8
	le16(coff+16, optSize)
	le16(coff+18, 0x206) // executable, debug stripped
	opt := coff + 20
	le16(opt, 0x20b) // PE32+
	le32(opt+4, uint32(k.TextSize))
	le32(opt+16, kernelTextOff) // entry point
	le32(opt+32, 0x200)         // section alignment
	le32(opt+36, 0x200)         // file alignment
	le32(opt+56, uint32(kernelTextOff+k.TextSize))
	le32(opt+60, kernelSetup) // SizeOfHeaders
	le32(opt+64, 0x5a5a5a5a)  // CheckSum: not covered by the digest
	le16(opt+68, 10)          // EFI application
	le32(opt+108, 16)         // NumberOfRvaAndSizes
	sections := []struct {
		name      string
		off, size int
	}{{".setup", kernelSetup, kernelTextOff - kernelSetup}, {".text", kernelTextOff, k.TextSize}}
	if k.ReverseSections {
		sections[0], sections[1] = sections[1], sections[0]
	}
	st := opt + optSize
	for i, s := range sections {
		h := st + 40*i
		copy(img[h:], s.name)
		le32(h+8, uint32(s.size))  // virtual size
		le32(h+12, uint32(s.off))  // virtual address
		le32(h+16, uint32(s.size)) // SizeOfRawData
		le32(h+20, uint32(s.off))  // PointerToRawData
		le32(h+36, 0x60000020)     // code, execute, read
	}
	// Boot protocol setup header (Documentation/arch/x86/boot.rst).
	img[0x1f1] = (kernelTextOff - kernelSetup) / 512 // setup_sects
	le16(0x1fe, 0xaa55)
	copy(img[0x202:], "HdrS")
	proto := k.Protocol
	if proto == 0 {
		proto = 0x20f
	}
	le16(0x206, proto)
	img[0x211] = 0x01        // loadflags: LOADED_HIGH
	le32(0x22c, 0x7fffffff)  // initrd_addr_max
	le16(0x236, k.XLoadFlag) // xloadflags
	return img
}
