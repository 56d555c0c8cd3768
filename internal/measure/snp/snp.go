// Package snp computes the launch measurement (launch digest) an AMD
// SEV-SNP guest booted from OVMF reports (QEMU/KVM, or the EC2 and GCE
// launch sequences), from the published
// firmware, kernel, initrd and command line, the vCPU count and type and
// the guest features: the value an attestation policy should accept,
// computed instead of copied from a running node.
//
// The digest is the chain of SNP_LAUNCH_UPDATE page-info hashes (SEV-SNP
// firmware ABI) in the order the VMM issues them: every page of the OVMF
// image, then the sections OVMF's SEV metadata lists (zero pages, the
// secrets and CPUID pages, the page holding the kernel hashes table), then
// one VMSA page per vCPU. Pure computation: no I/O.
package snp

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/confmesh/confmesh/internal/measure/ovmf"
)

// Section types of OVMF's SEV metadata (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
const (
	SectionSNPSecMem       = 1
	SectionSNPSecrets      = 2
	SectionCPUID           = 3
	SectionSVSMCAA         = 4
	SectionSNPKernelHashes = 0x10
)

// DefaultGuestFeatures is SEV_FEATURES with only SNPActive set: what QEMU
// gives an SNP guest unless told otherwise.
const DefaultGuestFeatures = 0x1

// VMM is the hypervisor that launches the guest: the initial vCPU state
// and which pages it measures differ between them.
type VMM int

// VMMs whose launch sequence LaunchDigest models (sev-snp-measure's
// --vmm-type QEMU, ec2, gce).
const (
	// VMMQEMU is QEMU/KVM (the zero value).
	VMMQEMU VMM = iota
	// VMMEC2 is Amazon EC2: it measures the CPUID page last and starts
	// vCPUs with its own register state.
	VMMEC2
	// VMMGCE is Google Compute Engine: pre-validated memory
	// (SNP_SEC_MEM) is recorded unmeasured; its own register state.
	VMMGCE
)

// ParseVMM reads a VMM name: qemu, ec2 or gce (any case).
func ParseVMM(s string) (VMM, error) {
	switch strings.ToLower(s) {
	case "qemu":
		return VMMQEMU, nil
	case "ec2":
		return VMMEC2, nil
	case "gce":
		return VMMGCE, nil
	}
	return 0, fmt.Errorf("unknown VMM %q (want qemu, ec2 or gce)", s)
}

// String names the VMM as ParseVMM reads it.
func (v VMM) String() string {
	switch v {
	case VMMQEMU:
		return "qemu"
	case VMMEC2:
		return "ec2"
	case VMMGCE:
		return "gce"
	}
	return fmt.Sprintf("VMM(%d)", int(v))
}

// fourGiB is where the OVMF image ends in guest physical memory.
const fourGiB = 1 << 32

// Input is everything the launch digest depends on.
type Input struct {
	// OVMF is the firmware image (OVMF.fd of an AmdSevX64 or OvmfX64 build).
	OVMF []byte
	// OVMFHash, when set, is the precomputed digest after the OVMF pages
	// (OVMFDigest); the image is then used only for its metadata.
	OVMFHash []byte
	// Boot, when set, is a measured direct boot (QEMU -kernel with
	// kernel-hashes=on): its hashes table is measured in place.
	Boot *DirectBoot
	// VCPUs is the number of vCPUs (one VMSA page each).
	VCPUs int
	// VCPUSig is the vCPUs' CPUID signature (VCPUSignature). Only QEMU
	// puts it in the VMSA; EC2 and GCE do not.
	VCPUSig uint32
	// GuestFeatures is the SEV_FEATURES value of every VMSA.
	GuestFeatures uint64
	// VMM is the hypervisor (QEMU unless set).
	VMM VMM
}

// DirectBoot is the kernel, initrd and command line QEMU loads and hashes.
type DirectBoot struct {
	Kernel  []byte
	Initrd  []byte // empty: no initrd (the hash of no bytes is measured)
	Cmdline string // without the terminating NUL, which is measured
}

// Section is one entry of OVMF's SEV metadata.
type Section struct {
	GPA  uint32
	Size uint32
	Type uint32
}

// Firmware is what the launch digest needs from an OVMF image.
type Firmware struct {
	// GPA is where the image starts: it ends at 4 GiB.
	GPA uint64
	// Sections are the SEV metadata sections, in image order.
	Sections []Section
	// APResetEIP is the application processors' reset address (0: none).
	APResetEIP uint32
	// HashTableGPA is where the VMM writes the kernel hashes table (0: none).
	HashTableGPA uint32
}

// ParseFirmware reads the footer table and SEV metadata of an OVMF image.
func ParseFirmware(image []byte) (*Firmware, error) {
	if len(image) == 0 || len(image)%pageSize != 0 || len(image) > fourGiB {
		return nil, fmt.Errorf("OVMF image of %d bytes: want a whole number of 4 KiB pages, at most 4 GiB", len(image))
	}
	table, err := ovmf.ParseTable(image)
	if err != nil {
		return nil, err
	}
	fw := &Firmware{GPA: fourGiB - uint64(len(image))}
	if _, ok := table[ovmf.SEVESResetBlockGUID]; ok {
		if fw.APResetEIP, err = table.Uint32(ovmf.SEVESResetBlockGUID, "SEV-ES reset block"); err != nil {
			return nil, err
		}
	}
	if _, ok := table[ovmf.SEVHashTableGUID]; ok {
		if fw.HashTableGPA, err = table.Uint32(ovmf.SEVHashTableGUID, "SEV hash table"); err != nil {
			return nil, err
		}
	}
	off, err := table.Uint32(ovmf.SEVMetadataGUID, "SEV metadata")
	if err != nil {
		return nil, fmt.Errorf("%w: this OVMF build has no SEV-SNP support", err)
	}
	start := len(image) - int(off)
	if off == 0 || int(off) > len(image) || start+16 > len(image) {
		return nil, fmt.Errorf("SEV metadata offset %d is outside the %d-byte image", off, len(image))
	}
	hdr := image[start:]
	if string(hdr[0:4]) != "ASEV" {
		return nil, fmt.Errorf("SEV metadata at offset %d: signature %q, want \"ASEV\"", start, hdr[0:4])
	}
	size := binary.LittleEndian.Uint32(hdr[4:])
	version := binary.LittleEndian.Uint32(hdr[8:])
	n := binary.LittleEndian.Uint32(hdr[12:])
	if version != 1 {
		return nil, fmt.Errorf("SEV metadata version %d: only version 1 is known", version)
	}
	if uint64(size) > uint64(len(image)-start) || uint64(n)*12+16 > uint64(size) {
		return nil, fmt.Errorf("SEV metadata: %d sections in %d bytes do not fit the image", n, size)
	}
	var total uint64
	for i := uint32(0); i < n; i++ {
		d := hdr[16+12*i:]
		s := Section{GPA: binary.LittleEndian.Uint32(d), Size: binary.LittleEndian.Uint32(d[4:]), Type: binary.LittleEndian.Uint32(d[8:])}
		if s.GPA%pageSize != 0 || s.Size%pageSize != 0 || s.Size == 0 {
			return nil, fmt.Errorf("SEV metadata section %d (type %#x): GPA %#x size %#x are not whole pages", i, s.Type, s.GPA, s.Size)
		}
		switch s.Type {
		case SectionSNPSecMem, SectionSNPSecrets, SectionCPUID, SectionSVSMCAA, SectionSNPKernelHashes:
		default:
			return nil, fmt.Errorf("SEV metadata section %d: unknown type %#x", i, s.Type)
		}
		// OVMF lists well under a MiB; a corrupt table is an error rather
		// than hours of hashing.
		if total += uint64(s.Size); total > fourGiB {
			return nil, fmt.Errorf("SEV metadata sections cover more than 4 GiB; not an OVMF image")
		}
		fw.Sections = append(fw.Sections, s)
	}
	return fw, nil
}

// OVMFDigest is the launch digest after the OVMF image's pages alone: the
// value sev-snp-measure calls the OVMF hash, which a firmware vendor can
// publish instead of the image.
func OVMFDigest(image []byte) ([]byte, error) {
	if len(image) == 0 || len(image)%pageSize != 0 || len(image) > fourGiB {
		return nil, fmt.Errorf("OVMF image of %d bytes: want a whole number of 4 KiB pages, at most 4 GiB", len(image))
	}
	var d digest
	d.normalPages(fourGiB-uint64(len(image)), image)
	return d[:], nil
}

// LaunchDigest computes the 48-byte SEV-SNP launch measurement.
func LaunchDigest(in Input) ([]byte, error) {
	if in.VCPUs < 1 {
		return nil, fmt.Errorf("vCPUs: %d, want at least 1", in.VCPUs)
	}
	if in.VCPUs > 4096 {
		return nil, fmt.Errorf("vCPUs: %d is more than any VMM starts", in.VCPUs)
	}
	if in.VMM != VMMQEMU && in.VMM != VMMEC2 && in.VMM != VMMGCE {
		return nil, fmt.Errorf("unknown VMM %d", int(in.VMM))
	}
	if in.GuestFeatures&1 == 0 {
		return nil, fmt.Errorf("guest features %#x: bit 0 (SNPActive) must be set for an SEV-SNP guest", in.GuestFeatures)
	}
	fw, err := ParseFirmware(in.OVMF)
	if err != nil {
		return nil, err
	}
	var d digest
	if in.OVMFHash != nil {
		if len(in.OVMFHash) != len(d) {
			return nil, fmt.Errorf("OVMF hash: %d bytes, want %d", len(in.OVMFHash), len(d))
		}
		copy(d[:], in.OVMFHash)
	} else {
		d.normalPages(fw.GPA, in.OVMF)
	}
	var hashes []byte
	if in.Boot != nil {
		if fw.HashTableGPA == 0 {
			return nil, errors.New("a kernel is given but this OVMF has no SEV hash table (build OvmfPkg/AmdSev/AmdSevX64.dsc for measured direct boot)")
		}
		hashes = in.Boot.table()
	}
	haveHashesSection := false
	for _, s := range fw.Sections {
		gpa, size := uint64(s.GPA), uint64(s.Size)
		switch s.Type {
		case SectionSNPSecMem:
			if in.VMM == VMMGCE {
				d.emptyPages(pageUnmeasured, gpa, size)
			} else {
				d.emptyPages(pageZero, gpa, size)
			}
		case SectionSVSMCAA:
			d.emptyPages(pageZero, gpa, size)
		case SectionSNPSecrets:
			d.emptyPages(pageSecrets, gpa, pageSize)
		case SectionCPUID:
			if in.VMM != VMMEC2 {
				d.emptyPages(pageCPUID, gpa, pageSize)
			}
		case SectionSNPKernelHashes:
			haveHashesSection = true
			if hashes == nil {
				d.emptyPages(pageZero, gpa, size)
				continue
			}
			if size != pageSize {
				return nil, fmt.Errorf("SNP_KERNEL_HASHES section of %#x bytes: want one page", size)
			}
			off := int(fw.HashTableGPA % pageSize)
			if off+len(hashes) > pageSize {
				return nil, fmt.Errorf("SEV hash table at %#x would cross a page boundary", fw.HashTableGPA)
			}
			page := make([]byte, pageSize)
			copy(page[off:], hashes)
			d.normalPages(gpa, page)
		}
	}
	if in.VMM == VMMEC2 { // EC2 measures the CPUID page(s) after all others
		for _, s := range fw.Sections {
			if s.Type == SectionCPUID {
				d.emptyPages(pageCPUID, uint64(s.GPA), pageSize)
			}
		}
	}
	if hashes != nil && !haveHashesSection {
		return nil, errors.New("a kernel is given but the OVMF SEV metadata has no SNP_KERNEL_HASHES section")
	}
	if in.VCPUs > 1 && fw.APResetEIP == 0 {
		return nil, errors.New("more than one vCPU but the OVMF footer table has no SEV-ES reset block (AP reset address)")
	}
	for i := 0; i < in.VCPUs; i++ {
		eip := uint32(bspResetEIP)
		if i > 0 {
			eip = fw.APResetEIP
		}
		h := sha384Page(vmsaPage(in.VMM, eip, in.GuestFeatures, in.VCPUSig))
		d.update(pageVMSA, vmsaGPA, &h)
	}
	return d[:], nil
}

// GUIDs of QEMU's SEV hash table and its entries (QEMU target/i386/sev.c).
var (
	hashTableGUID   = ovmf.MustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	hashKernelGUID  = ovmf.MustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
	hashInitrdGUID  = ovmf.MustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	hashCmdlineGUID = ovmf.MustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)

// table renders the hash table QEMU writes for a measured direct boot:
// header (GUID, uint16 length) and the SHA-256 entries (GUID, uint16
// length, hash) of the command line (with its NUL), initrd and kernel,
// zero-padded to a multiple of 16 bytes.
func (b *DirectBoot) table() []byte {
	const entryLen = 16 + 2 + sha256.Size
	const tableLen = 16 + 2 + 3*entryLen
	out := make([]byte, 0, (tableLen+15)&^15)
	out = append(out, hashTableGUID[:]...)
	out = binary.LittleEndian.AppendUint16(out, tableLen)
	entry := func(g ovmf.GUID, data []byte) {
		h := sha256.Sum256(data)
		out = append(out, g[:]...)
		out = binary.LittleEndian.AppendUint16(out, entryLen)
		out = append(out, h[:]...)
	}
	entry(hashCmdlineGUID, append([]byte(b.Cmdline), 0))
	entry(hashInitrdGUID, b.Initrd)
	entry(hashKernelGUID, b.Kernel)
	return out[:cap(out)]
}
