package tdx

import (
	"encoding/binary"
	"fmt"
)

// QEMU writes these into a bzImage's boot-protocol setup header before it
// hands the kernel to the firmware through fw_cfg (hw/i386/x86.c,
// x86_load_linux), and OVMF before edk2-stable202505 measures the kernel as
// QEMU handed it: the patched bytes are part of the measured image.
const (
	// qemuACPIDataSize is what the pc and q35 machines reserve for ACPI
	// data below 4 GiB (0x20000 + 0x8000); the initrd goes below it.
	qemuACPIDataSize = 0x28000
	// qemuLoaderType is type_of_loader "QEMU".
	qemuLoaderType = 0xb0
	// minKernelSize: anything shorter holds no full setup header.
	minKernelSize = 0x1000
	// Setup-header offsets (Documentation/arch/x86/boot.rst).
	hdrMagic         = 0x202
	hdrVersion       = 0x206
	hdrTypeOfLoader  = 0x210
	hdrLoadFlags     = 0x211
	hdrRamdiskImage  = 0x218
	hdrRamdiskSize   = 0x21c
	hdrHeapEndPtr    = 0x224
	hdrCmdLinePtr    = 0x228
	hdrInitrdMax     = 0x22c
	hdrXLoadFlags    = 0x236
	loadedHigh       = 0x01
	canUseHeap       = 0x80
	xlfInitrdAbove4G = 0x40
)

// qemuPatchKernel returns a copy of the bzImage kernel with its setup
// header patched as QEMU patches it for a guest of memSize bytes of RAM
// and an initrd of initrdSize bytes (0: none). Kernels QEMU would load
// another way (no "HdrS", boot protocol before 2.02, or not loaded high)
// are refused: no EFI-stub kernel is one.
func qemuPatchKernel(kernel []byte, initrdSize, memSize uint64) ([]byte, error) {
	if len(kernel) < minKernelSize {
		return nil, fmt.Errorf("kernel of %d bytes is too small for a bzImage", len(kernel))
	}
	if string(kernel[hdrMagic:hdrMagic+4]) != "HdrS" {
		return nil, fmt.Errorf("kernel has no x86 boot-protocol header (\"HdrS\" at %#x): not a bzImage", hdrMagic)
	}
	k := append([]byte(nil), kernel...)
	le32 := binary.LittleEndian.PutUint32
	protocol := binary.LittleEndian.Uint16(k[hdrVersion:])
	if protocol < 0x202 || k[hdrLoadFlags]&loadedHigh == 0 {
		return nil, fmt.Errorf("kernel boot protocol %d.%02d (loadflags %#x): QEMU loads it below 1 MiB, which this tool does not model (an EFI-stub kernel is 2.11 or later and loaded high)", protocol>>8, protocol&0xff, k[hdrLoadFlags])
	}
	// A high, recent kernel: real-mode code at 0x10000, command line at 0x20000.
	const realAddr, cmdlineAddr = 0x10000, 0x20000
	k[hdrTypeOfLoader] = qemuLoaderType
	k[hdrLoadFlags] |= canUseHeap
	le32(k[hdrHeapEndPtr:], cmdlineAddr-realAddr-0x200)
	le32(k[hdrCmdLinePtr:], cmdlineAddr)
	if initrdSize == 0 {
		return k, nil
	}
	var initrdMax uint64 = 0x37ffffff
	switch {
	case protocol >= 0x20c && binary.LittleEndian.Uint16(k[hdrXLoadFlags:])&xlfInitrdAbove4G != 0:
		initrdMax = 0xffffffff
	case protocol >= 0x203:
		// QEMU takes initrd_addr_max as it is, for 2.12+ kernels without
		// XLF_CAN_BE_LOADED_ABOVE_4G too (virtee/tdx-measure and
		// dstack-mr assume 0x37ffffff there instead).
		initrdMax = uint64(binary.LittleEndian.Uint32(k[hdrInitrdMax:]))
	}
	// The q35 and pc machines split RAM at 2 GiB when the guest has at
	// least 2.75 GiB, else at 2.75 GiB.
	var lowmem uint64 = 0xb0000000
	if memSize >= lowmem {
		lowmem = 0x80000000
	}
	below4G := min(memSize, lowmem)
	if below4G <= qemuACPIDataSize {
		return nil, fmt.Errorf("guest memory of %d bytes leaves no room for an initrd", memSize)
	}
	if initrdMax >= below4G-qemuACPIDataSize {
		initrdMax = below4G - qemuACPIDataSize - 1
	}
	if initrdSize >= initrdMax {
		return nil, fmt.Errorf("initrd of %d bytes does not fit below %#x in a guest of %d bytes of memory (QEMU refuses it)", initrdSize, initrdMax, memSize)
	}
	le32(k[hdrRamdiskImage:], uint32((initrdMax-initrdSize)&^0xfff))
	le32(k[hdrRamdiskSize:], uint32(initrdSize))
	return k, nil
}
