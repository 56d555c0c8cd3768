package tdx

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/measure/measuretest"
)

// Vectors computed by running confidential-containers/td-shim's
// independent MRTD calculator (td-shim-tools/src/bin/td-shim-tee-info-hash/
// td_shim_tee_info_hash.py, commit 125eeab58f69, Python standard library
// only) on the images measuretest builds, written out and passed with -i.
// Its page order (each page added, then extended) is also the one
// virtee/tdx-measure's src/tdvf.rs (Tdvf::mrtd) implements.
func TestReferenceRunVectors(t *testing.T) {
	tdshim := measuretest.SmallTDVF("confmesh-tdshim")
	tdshim.NoFooter = true
	payload := measuretest.TDVFImage{Size: 0x6000, Seed: "confmesh-payload", Sections: []measuretest.TDVFSection{
		{DataOffset: 0, RawDataSize: 0x3000, MemoryAddress: 0x1000000, MemoryDataSize: 0x3000, Type: SectionPayload, Attributes: AttrMRExtend},
		{DataOffset: 0x3000, RawDataSize: 0x1000, MemoryAddress: 0x2000000, MemoryDataSize: 0x2000, Type: SectionPayloadParam},
		{DataOffset: 0x4000, RawDataSize: 0x2000, MemoryAddress: 0xfffe0000, MemoryDataSize: 0x2000, Type: SectionBFV, Attributes: AttrMRExtend},
	}}
	for _, tc := range []struct {
		name  string
		image []byte
		want  string
	}{
		// OVMF-style: footer table entry e47a6535-... points at the
		// descriptor; CFV and BFV extended, TD HOB and temporary memory
		// added, PAGE_AUG memory skipped.
		{"SmallTDVF(confmesh-tdvf)", measuretest.SmallTDVF("confmesh-tdvf").Build(),
			"5ce6eff7fe8a4d1abc016c2cee1f06952a87c49f78ec93a35bcec7fb19a1d75f46ac86e2dac68466a29e0969af546cbf"},
		// td-shim style: no footer table, descriptor offset 0x20 before the end.
		{"SmallTDVF(confmesh-tdshim) without footer", tdshim.Build(),
			"1e866566aca1968d5872dfb7e71c640d0cf7214e98d512bc40cb774b3afd8c7d61db397dffce85ddd0391c7ded452e7b"},
		// Payload and parameters (raw data shorter than memory, added only).
		{"payload image", payload.Build(),
			"b6066e506662550eab3271121cca3d2bc4e81e20e92ae270b35592859ea0832dac85813013205cceadf7d3fdbe5b86b2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MRTD(tc.image)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tc.want {
				t.Fatalf("MRTD %x, td-shim's calculator computed %s", got, tc.want)
			}
		})
	}
}

// The MRTD covers the extended contents and the added pages' addresses,
// and not the contents of pages that are only added: a byte in the BFV
// or a moved section changes it, a byte in an added-only section does not.
func TestWhatMRTDCovers(t *testing.T) {
	spec := measuretest.SmallTDVF("cover")
	base, err := MRTD(spec.Build())
	if err != nil {
		t.Fatal(err)
	}
	img := spec.Build()
	img[0x3000] ^= 1 // inside the BFV
	if m, _ := MRTD(img); hex.EncodeToString(m) == hex.EncodeToString(base) {
		t.Fatal("a changed BFV byte left the MRTD unchanged")
	}
	moved := spec
	moved.Sections = append([]measuretest.TDVFSection(nil), spec.Sections...)
	moved.Sections[3].MemoryAddress += 0x1000 // temporary memory elsewhere
	if m, _ := MRTD(moved.Build()); hex.EncodeToString(m) == hex.EncodeToString(base) {
		t.Fatal("moving an added section left the MRTD unchanged")
	}
	// A section that is added but not extended is measured by address
	// only: its contents are the VMM's to fill.
	added := measuretest.TDVFImage{Size: 0x3000, Seed: "added", Sections: []measuretest.TDVFSection{
		{DataOffset: 0, RawDataSize: 0x1000, MemoryAddress: 0x2000000, MemoryDataSize: 0x1000, Type: SectionPayloadParam},
		{DataOffset: 0x1000, RawDataSize: 0x2000, MemoryAddress: 0xfffe0000, MemoryDataSize: 0x2000, Type: SectionBFV, Attributes: AttrMRExtend},
	}}
	a := added.Build()
	m1, err := MRTD(a)
	if err != nil {
		t.Fatal(err)
	}
	a[0x100] ^= 1
	if m2, _ := MRTD(a); hex.EncodeToString(m1) != hex.EncodeToString(m2) {
		t.Fatal("the contents of an added, not extended, section changed the MRTD")
	}
}

func TestRefusals(t *testing.T) {
	with := func(f func(*measuretest.TDVFImage)) []byte {
		s := measuretest.SmallTDVF("r")
		s.Sections = append([]measuretest.TDVFSection(nil), s.Sections...)
		f(&s)
		return s.Build()
	}
	noTDX := measuretest.AmdSevImage(0x4000, "snp only").Build()
	for _, tc := range []struct {
		name  string
		image []byte
		want  string
	}{
		{"SEV-only OVMF", noTDX, "no TDX support"},
		{"random bytes", measuretest.Fill("garbage", 0x4000), "outside the"},
		{"tiny", []byte{1, 2, 3}, "too small"},
		{"unknown type", with(func(s *measuretest.TDVFImage) { s.Sections[2].Type = 9 }), "unknown section type"},
		{"unaligned GPA", with(func(s *measuretest.TDVFImage) { s.Sections[2].MemoryAddress |= 0x10 }), "not whole pages"},
		{"raw past image", with(func(s *measuretest.TDVFImage) { s.Sections[1].DataOffset = 0x8000 }), "runs past"},
		{"short extended raw", with(func(s *measuretest.TDVFImage) { s.Sections[0].RawDataSize = 0x1000 }), "MR_EXTEND section with"},
		{"unknown attribute", with(func(s *measuretest.TDVFImage) { s.Sections[2].Attributes = 4 }), "unknown attributes"},
		{"huge added section", with(func(s *measuretest.TDVFImage) { s.Sections[3].MemoryDataSize = 1 << 40 }), "more than 4 GiB"},
		{"wrapping GPA", with(func(s *measuretest.TDVFImage) { s.Sections[3].MemoryAddress = 0xfffffffffffff000 }), "wrap around"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := MRTD(tc.image)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
