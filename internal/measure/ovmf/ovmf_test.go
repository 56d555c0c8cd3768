package ovmf

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// The footer GUID in EFI byte order as it sits in every OVMF image
// (edk2 ResetVectorVtf0.asm: "DB 0xde, 0x82, 0xb5, 0x96, ...").
func TestGUIDByteOrder(t *testing.T) {
	want, _ := hex.DecodeString("de82b596b21ff745baeaa366c55a082d")
	if !bytes.Equal(FooterGUID[:], want) {
		t.Fatalf("footer GUID bytes %x, want %x", FooterGUID[:], want)
	}
	if s := FooterGUID.String(); s != "96b582de-1fb2-45f7-baea-a366c55a082d" {
		t.Fatalf("String() = %s", s)
	}
	if _, err := ParseGUID("96b582de-1fb2-45f7-baea"); err == nil {
		t.Fatal("a short GUID parsed")
	}
}

func TestTableRoundTripAndRefusals(t *testing.T) {
	a, b := MustGUID("00000000-0000-0000-0000-000000000001"), MustGUID("00000000-0000-0000-0000-000000000002")
	img := make([]byte, 4096)
	PlaceTable(img, BuildTable([]Entry{{a, []byte{1, 2, 3, 4}}, {b, []byte{9}}}))
	tab, err := ParseTable(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tab[a], []byte{1, 2, 3, 4}) || !bytes.Equal(tab[b], []byte{9}) || len(tab) != 2 {
		t.Fatalf("table %v", tab)
	}
	if v, err := tab.Uint32(a, "a"); err != nil || v != 0x04030201 {
		t.Fatalf("Uint32 = %#x %v", v, err)
	}
	if _, err := tab.Uint32(b, "b"); err == nil || !strings.Contains(err.Error(), "holds 1 bytes") {
		t.Fatalf("short entry: %v", err)
	}
	if _, err := tab.Uint32(FooterGUID, "footer"); err == nil || !strings.Contains(err.Error(), "no footer entry") {
		t.Fatalf("missing entry: %v", err)
	}

	// An entry whose size runs past the table start is refused, not read
	// out of bounds.
	bad := append([]byte(nil), img...)
	end := len(bad) - footerOffset - entryHeader // end of the last entry (b)
	bad[end-entryHeader] = 0xff
	if _, err := ParseTable(bad); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("oversized entry: %v", err)
	}
	// A footer size larger than the image is refused.
	bad = append([]byte(nil), img...)
	bad[len(bad)-footerOffset-entryHeader] = 0xff
	bad[len(bad)-footerOffset-entryHeader+1] = 0xff
	if _, err := ParseTable(bad); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Fatalf("oversized table: %v", err)
	}
	if _, err := ParseTable(make([]byte, 4096)); err == nil || !strings.Contains(err.Error(), "no OVMF footer table") {
		t.Fatalf("no table: %v", err)
	}
	if _, err := ParseTable(make([]byte, 10)); err == nil {
		t.Fatal("10-byte image parsed")
	}
}
