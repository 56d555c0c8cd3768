package tdx

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/measure/measuretest"
)

// Vectors computed by running kvinwang/dstack-mr (Go, commit 4a167f8,
// Phala's dstack measurement tool; its Authenticode digest comes from
// foxboron/go-uefi) on the same kernel, initrd and command line:
// internal.MeasureTdxQemuKernelImageData(kernel, len(initrd), memMiB,
// 0x28000) for the kernel event, its measureTdxKernelCmdline (with
// " initrd=initrd" appended as its main does) and measureSha384(initrd) for
// RTMR[2], and its event list for RTMR[1]: kernel, "Calling EFI Application
// from Boot Option", separator 00000000, "Exit Boot Services Invocation",
// "Exit Boot Services Returned with Success" (the same list as
// virtee/tdx-measure's src/kernel.rs measure_rtmr1_direct). dstack-mr
// always extends an initrd event; for the boot without an initrd its
// primitives were replayed without it, as the EFI stub measures an initrd
// only when it loaded one (drivers/firmware/efi/libstub/efi-stub-helper.c,
// efi_load_initrd).
func TestDirectBootVectors(t *testing.T) {
	kernel := measuretest.Kernel("confmesh-kernel", 0x3000)
	xlf := kernel
	xlf.XLoadFlag = 0x40 // XLF_CAN_BE_LOADED_ABOVE_4G, as every x86_64 kernel sets it
	initrd := measuretest.Fill("confmesh-initrd", 3000)
	const cmdline = "console=ttyS0 root=/dev/vda1"
	for _, tc := range []struct {
		name                 string
		boot                 DirectBoot
		kernel, rtmr1, rtmr2 string
	}{
		{"1 GiB, initrd", DirectBoot{Kernel: xlf.Build(), Initrd: initrd, Cmdline: cmdline, MemorySize: 1 << 30},
			"ae6071d176693c528cf5c98c6df298e2a73d046319116fd9159b6b93bdcb23651ab99c28aa53d0c6818adb1d7c5c9c88",
			"85ce960df6fbff36037b0e24d3e4d136284924d413f77786b9f78e2583aff53127c3431f40c8cd52cf50e553c15c7701",
			"7c51b4e29de404b23f268217fa30b515233d7f97e92156c22bbd840ea64d54fcf9016a216832eedc9be89511a3e84622"},
		{"4 GiB, initrd", DirectBoot{Kernel: xlf.Build(), Initrd: initrd, Cmdline: cmdline, MemorySize: 4 << 30},
			"7dd6a4ff47ed6f51e2b342c137180076685cdc6a08534a5fdd77f291f46c7ec74d56748cc207bdf7f3bb4b376ac05944",
			"125503d4d8764b2be942da7729851825d2fe9abde8ae87ee940eaad3d24eca342252ee5622938f5182f42b2eefbf69d9",
			"7c51b4e29de404b23f268217fa30b515233d7f97e92156c22bbd840ea64d54fcf9016a216832eedc9be89511a3e84622"},
		{"no initrd", DirectBoot{Kernel: kernel.Build(), Cmdline: "console=hvc0", MemorySize: 2 << 30},
			"ed601a061c9d248a2d6abe06342c0ca3051f1ca22291037fb268c3e81b01b746cecbf8cb1411965f36dcc9c690f68464",
			"a0ef3c43d123533540f1e91f25784e636ce72b7f4e23974db6e62a1669ea28e2d2d6ae0eb8ba1f5057b6c98221c73d10",
			"2392480552c81c55a64283523191f66aa2ef465545ffb29dc4486a4b9f8a7c4e5cb6795fbddad865defe6bd88c7aedb3"},
		{"empty command line, initrd", DirectBoot{Kernel: xlf.Build(), Initrd: initrd, MemorySize: 2 << 30},
			"7dd6a4ff47ed6f51e2b342c137180076685cdc6a08534a5fdd77f291f46c7ec74d56748cc207bdf7f3bb4b376ac05944",
			"125503d4d8764b2be942da7729851825d2fe9abde8ae87ee940eaad3d24eca342252ee5622938f5182f42b2eefbf69d9",
			"d32804548e9b824af6da86d7765db9fd9103d7223bd425be6e0bb0d57c911db47588e9f6ca7634bf6ef5fcb8ae692d28"},
		// A 2.12+ kernel without XLF_CAN_BE_LOADED_ABOVE_4G: QEMU's
		// x86_load_linux (hw/i386/x86.c) takes its initrd_addr_max
		// (0x7fffffff here); dstack-mr and virtee/tdx-measure assume
		// 0x37ffffff and compute kernel bf462266... and RTMR[1]
		// ac122556... instead. Pinned from this implementation.
		{"no XLF, initrd_addr_max from the header", DirectBoot{Kernel: kernel.Build(), Initrd: initrd, Cmdline: cmdline, MemorySize: 2 << 30},
			"9734625c1fa2e76aac640c1f5d6df969f008ebeb1a2578560177ca89f84a66c553bbf72cee4b6c3f4f379fd2db8664c7",
			"c559b966827dcf874e6d2e3ea3d650f9fd5d0d71c13207a8544a4f5cb077dd66c8757b90a22c27a6d50eb36f5c203460",
			"7c51b4e29de404b23f268217fa30b515233d7f97e92156c22bbd840ea64d54fcf9016a216832eedc9be89511a3e84622"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := DirectBootRTMRs(tc.boot)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				what string
				got  []byte
				want string
			}{{"kernel digest", l.Events1[0].Digest, tc.kernel}, {"RTMR[1]", l.RTMR1, tc.rtmr1}, {"RTMR[2]", l.RTMR2, tc.rtmr2}} {
				if hex.EncodeToString(c.got) != c.want {
					t.Errorf("%s %x, want %s", c.what, c.got, c.want)
				}
			}
		})
	}
}

// The event digests are the published strings' and structures' SHA-384:
// EV_EFI_ACTION strings from MdePkg/Include/IndustryStandard/
// UefiTcgPlatform.h, the LoadOptions bytes OVMF builds in
// OvmfPkg/Library/X86QemuLoadImageLib (UTF-16LE, NUL-terminated, each byte
// widened), and nothing in RTMR[2] when there is neither a command line
// nor an initrd (the EFI stub measures LoadOptions only when their size is
// not zero).
func TestEventsAndLoadOptions(t *testing.T) {
	if got := string(LoadOptions("a", true)); got != "a\x00 \x00i\x00n\x00i\x00t\x00r\x00d\x00=\x00i\x00n\x00i\x00t\x00r\x00d\x00\x00\x00" {
		t.Fatalf("LoadOptions(a, initrd) = %q", got)
	}
	if got := LoadOptions("\xe9", false); hex.EncodeToString(got) != "e9000000" {
		t.Fatalf("a byte past ASCII is widened, not decoded: %x", got)
	}
	if LoadOptions("", false) != nil {
		t.Fatal("empty command line without initrd: OVMF sets no LoadOptions")
	}
	l, err := DirectBootRTMRs(DirectBoot{Kernel: measuretest.Kernel("k", 0x1000).Build(), MemorySize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events2) != 0 || hex.EncodeToString(l.RTMR2) != strings.Repeat("00", 48) {
		t.Fatalf("no command line, no initrd: RTMR[2] %x from %d events, want zero", l.RTMR2, len(l.Events2))
	}
	// sha384("Calling EFI Application from Boot Option"), as dstack-mr and
	// virtee/tdx-measure compute it.
	if got := hex.EncodeToString(l.Events1[1].Digest); got != hex.EncodeToString(sha384([]byte("Calling EFI Application from Boot Option"))) || l.Events1[2].Type != "EV_SEPARATOR" {
		t.Fatalf("RTMR[1] events %+v", l.Events1)
	}
}

// What the RTMRs cover: another kernel byte, initrd byte, command line,
// memory size (through the initrd address QEMU patches in) or kernel
// setup changes them; the memory size does not matter without an initrd.
func TestWhatRTMRsCover(t *testing.T) {
	k := measuretest.Kernel("cover", 0x2000)
	k.XLoadFlag = 0x40
	base := DirectBoot{Kernel: k.Build(), Initrd: []byte("initrd"), Cmdline: "ro", MemorySize: 1 << 30}
	b0, err := DirectBootRTMRs(base)
	if err != nil {
		t.Fatal(err)
	}
	differs := func(name string, f func(*DirectBoot), r1, r2 bool) {
		t.Helper()
		b := base
		b.Kernel = append([]byte(nil), base.Kernel...)
		f(&b)
		l, err := DirectBootRTMRs(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := hex.EncodeToString(l.RTMR1) != hex.EncodeToString(b0.RTMR1); got != r1 {
			t.Errorf("%s: RTMR[1] changed = %v, want %v", name, got, r1)
		}
		if got := hex.EncodeToString(l.RTMR2) != hex.EncodeToString(b0.RTMR2); got != r2 {
			t.Errorf("%s: RTMR[2] changed = %v, want %v", name, got, r2)
		}
	}
	differs("kernel text byte", func(b *DirectBoot) { b.Kernel[0x1800] ^= 1 }, true, false)
	differs("PE checksum", func(b *DirectBoot) { b.Kernel[0x40+4+20+64] ^= 1 }, false, false)
	differs("initrd byte", func(b *DirectBoot) { b.Initrd = []byte("initrD") }, false, true)
	differs("initrd size", func(b *DirectBoot) { b.Initrd = []byte("initrd!") }, true, true)
	differs("command line", func(b *DirectBoot) { b.Cmdline = "rw" }, false, true)
	differs("memory", func(b *DirectBoot) { b.MemorySize = 2 << 30 }, true, false)
	differs("unpatched setup", func(b *DirectBoot) { b.Setup = SetupUnpatched }, true, false)
	noInitrd := base
	noInitrd.Initrd = nil
	l1, _ := DirectBootRTMRs(noInitrd)
	noInitrd.MemorySize = 8 << 30
	l2, _ := DirectBootRTMRs(noInitrd)
	if hex.EncodeToString(l1.RTMR1) != hex.EncodeToString(l2.RTMR1) {
		t.Error("without an initrd the memory size changed RTMR[1]")
	}
}

func TestDirectBootRefusals(t *testing.T) {
	good := measuretest.Kernel("r", 0x1000)
	old := good
	old.Protocol = 0x201
	noMax := good
	noMax.Protocol = 0x20b
	noMaxImg := noMax.Build()
	noMaxImg[0x22c], noMaxImg[0x22d], noMaxImg[0x22e], noMaxImg[0x22f] = 0, 0, 0, 0
	notPE := good.Build()
	notPE[0x40] = 'X'
	for _, tc := range []struct {
		name string
		boot DirectBoot
		want string
	}{
		{"tiny kernel", DirectBoot{Kernel: []byte("kernel")}, "too small"},
		{"no HdrS", DirectBoot{Kernel: measuretest.Fill("x", 0x2000)}, "not a bzImage"},
		{"old protocol", DirectBoot{Kernel: old.Build()}, "boot protocol 2.01"},
		{"initrd too large", DirectBoot{Kernel: good.Build(), Initrd: make([]byte, 1<<20), MemorySize: 1 << 20}, "does not fit below 0xd7fff"},
		{"no memory", DirectBoot{Kernel: good.Build(), Initrd: []byte("i")}, "leaves no room"},
		{"initrd_addr_max 0", DirectBoot{Kernel: noMaxImg, Initrd: []byte("i"), MemorySize: 1 << 30}, "does not fit below 0x0"},
		{"not PE", DirectBoot{Kernel: notPE}, "not a PE/COFF image"},
		{"unpatched not PE", DirectBoot{Kernel: measuretest.Fill("y", 0x2000), Setup: SetupUnpatched}, "not a PE/COFF image"},
		{"NUL in command line", DirectBoot{Kernel: good.Build(), Cmdline: "a\x00b"}, "NUL byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := DirectBootRTMRs(tc.boot)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v (log %v), want one containing %q", err, l, tc.want)
			}
		})
	}
}
