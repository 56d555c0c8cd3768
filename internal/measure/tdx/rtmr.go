package tdx

import (
	"crypto/sha512"
	"fmt"
	"strings"

	"github.com/confmesh/confmesh/internal/measure/authenticode"
)

// KernelSetup says which bytes of the kernel OVMF measures on a QEMU
// direct boot.
type KernelSetup int

const (
	// SetupQEMUPatched: the bzImage with the setup header QEMU patched
	// (loader type, heap end, command-line pointer, initrd address and
	// size). OVMF before edk2-stable202505 (e.g. Ubuntu 24.04's and 25.04's
	// TDX stacks) loads and measures the kernel as QEMU hands it over.
	SetupQEMUPatched KernelSetup = iota
	// SetupUnpatched: the kernel file as it is (OVMF edk2-stable202505 and
	// later load the unmodified image QEMU also provides).
	SetupUnpatched
)

// String is the CLI name of the setting.
func (s KernelSetup) String() string {
	if s == SetupUnpatched {
		return "unpatched"
	}
	return "qemu-patched"
}

// ParseKernelSetup parses a KernelSetup's String form.
func ParseKernelSetup(s string) (KernelSetup, error) {
	switch s {
	case "qemu-patched":
		return SetupQEMUPatched, nil
	case "unpatched":
		return SetupUnpatched, nil
	}
	return 0, fmt.Errorf("unknown kernel setup %q (want qemu-patched or unpatched)", s)
}

// DirectBoot is a QEMU direct Linux boot of a TD (-kernel, -initrd,
// -append) through OVMF.
type DirectBoot struct {
	Kernel  []byte // bzImage with the EFI stub
	Initrd  []byte // nil or empty: no -initrd
	Cmdline string // -append
	Setup   KernelSetup
	// MemorySize is the guest RAM in bytes (-m): with SetupQEMUPatched and
	// an initrd it decides the initrd address QEMU writes into the kernel.
	MemorySize uint64
}

// Event is one measurement extended into an RTMR.
type Event struct {
	Type        string // TCG event type
	Description string
	Digest      []byte // SHA-384
}

// RTMRLog is the computed RTMR[1] and RTMR[2] of a direct boot and the
// events that make them up, in order.
type RTMRLog struct {
	RTMR1, RTMR2     []byte
	Events1, Events2 []Event
}

// Event strings OVMF logs as EV_EFI_ACTION (MdePkg's TcgPcrEvent/
// UefiTcgPlatform.h: EFI_CALLING_EFI_APPLICATION, EFI_EXIT_BOOT_SERVICES_*).
const (
	actionCallingApplication = "Calling EFI Application from Boot Option"
	actionExitBootServices   = "Exit Boot Services Invocation"
	actionExitBootSucceeded  = "Exit Boot Services Returned with Success"
	// initrdLoadOption is what OVMF's X86QemuLoadImageLib appends to the
	// command line when QEMU has an initrd.
	initrdLoadOption = " initrd=initrd"
)

// DirectBootRTMRs computes RTMR[1] and RTMR[2] after a QEMU direct boot
// of the kernel through OVMF (TDVF) and the kernel's EFI stub, up to the
// stub's ExitBootServices:
//
//	RTMR[1] (PCR 2-6): the kernel's Authenticode digest
//	  (EV_EFI_BOOT_SERVICES_APPLICATION, measured when OVMF loads it),
//	  EV_EFI_ACTION "Calling EFI Application from Boot Option" and
//	  EV_SEPARATOR 0x00000000 (at ReadyToBoot, after the load),
//	  EV_EFI_ACTION "Exit Boot Services Invocation" and
//	  "Exit Boot Services Returned with Success".
//	RTMR[2] (PCR 8-15): the EFI stub's EV_EVENT_TAG events, the
//	  LoadOptions OVMF built (the command line, " initrd=initrd" when there
//	  is an initrd, as UTF-16LE with its terminating NUL; none when both
//	  are empty) and the initrd's contents it loaded through
//	  LINUX_EFI_INITRD_MEDIA_GUID.
//
// Each extend is RTMR = SHA-384(RTMR || digest), from zero.
func DirectBootRTMRs(b DirectBoot) (*RTMRLog, error) {
	if strings.IndexByte(b.Cmdline, 0) >= 0 {
		return nil, fmt.Errorf("kernel command line contains a NUL byte: QEMU would cut it there")
	}
	kernel := b.Kernel
	if b.Setup == SetupQEMUPatched {
		var err error
		if kernel, err = qemuPatchKernel(b.Kernel, uint64(len(b.Initrd)), b.MemorySize); err != nil {
			return nil, err
		}
	}
	kd, err := authenticode.Hash(kernel, sha512.New384)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	l := &RTMRLog{Events1: []Event{
		{"EV_EFI_BOOT_SERVICES_APPLICATION", "kernel (Authenticode, " + b.Setup.String() + ")", kd},
		action(actionCallingApplication),
		{"EV_SEPARATOR", "separator", sha384([]byte{0, 0, 0, 0})},
		action(actionExitBootServices),
		action(actionExitBootSucceeded),
	}}
	if opts := LoadOptions(b.Cmdline, len(b.Initrd) > 0); opts != nil {
		l.Events2 = append(l.Events2, Event{"EV_EVENT_TAG", "LOADED_IMAGE::LoadOptions", sha384(opts)})
	}
	if len(b.Initrd) > 0 {
		l.Events2 = append(l.Events2, Event{"EV_EVENT_TAG", "Linux initrd", sha384(b.Initrd)})
	}
	l.RTMR1, l.RTMR2 = Replay(l.Events1), Replay(l.Events2)
	return l, nil
}

// LoadOptions returns the kernel's LoadOptions as OVMF's
// X86QemuLoadImageLib sets them (QemuLoadKernelImage): the command line
// with " initrd=initrd" appended when there is an initrd, in UTF-16LE,
// NUL-terminated (each byte widened to a CHAR16); nil when both are
// empty.
func LoadOptions(cmdline string, initrd bool) []byte {
	if initrd {
		cmdline += initrdLoadOption
	}
	if cmdline == "" {
		return nil
	}
	// UnicodeSPrintAsciiFormat's %a widens each byte to a CHAR16: bytes
	// past ASCII are not decoded as UTF-8.
	out := make([]byte, 0, 2*len(cmdline)+2)
	for i := 0; i < len(cmdline); i++ {
		out = append(out, cmdline[i], 0)
	}
	return append(out, 0, 0)
}

// Replay extends a zero RTMR with each event's digest in order.
func Replay(events []Event) []byte {
	mr := make([]byte, sha512.Size384)
	for _, e := range events {
		h := sha512.New384()
		h.Write(mr)
		h.Write(e.Digest)
		mr = h.Sum(mr[:0])
	}
	return mr
}

func action(s string) Event { return Event{"EV_EFI_ACTION", s, sha384([]byte(s))} }

func sha384(b []byte) []byte {
	d := sha512.Sum384(b)
	return d[:]
}
