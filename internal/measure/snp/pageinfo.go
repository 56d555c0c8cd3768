package snp

import (
	"crypto/sha512"
	"encoding/binary"
)

// Page types of SNP_LAUNCH_UPDATE (SEV-SNP firmware ABI, PAGE_INFO).
const (
	pageNormal     = 0x01
	pageVMSA       = 0x02
	pageZero       = 0x03
	pageUnmeasured = 0x04
	pageSecrets    = 0x05
	pageCPUID      = 0x06
)

const pageSize = 4096

// vmsaGPA is the GPA the launch digest records for a VMSA page: the
// firmware uses (u64)-1, page aligned, bits above 51 cleared.
const vmsaGPA = 0xFFFFFFFFF000

// digest is the running launch digest: each SNP_LAUNCH_UPDATE replaces it
// by SHA-384 of the PAGE_INFO structure, which holds the previous digest,
// the page's contents hash, its type and its GPA.
type digest [sha512.Size384]byte

// update folds one page into the digest. The PAGE_INFO structure (SNP ABI
// specification, "Layout of the PAGE_INFO structure") is 0x70 bytes:
// DIGEST_CUR(48) CONTENTS(48) LENGTH(2) PAGE_TYPE(1) IMI_PAGE(1)
// VMPL3_PERMS VMPL2_PERMS VMPL1_PERMS(1 each) reserved(1) GPA(8).
func (d *digest) update(pageType byte, gpa uint64, contents *[48]byte) {
	var info [0x70]byte
	copy(info[0:48], d[:])
	copy(info[48:96], contents[:])
	binary.LittleEndian.PutUint16(info[96:], 0x70)
	info[98] = pageType
	binary.LittleEndian.PutUint64(info[104:], gpa)
	*d = sha512.Sum384(info[:])
}

// normalPages measures data page by page from gpa (len(data) is a whole
// number of pages; the caller checks).
func (d *digest) normalPages(gpa uint64, data []byte) {
	for off := 0; off < len(data); off += pageSize {
		h := sha512.Sum384(data[off : off+pageSize])
		d.update(pageNormal, gpa+uint64(off), &h)
	}
}

// emptyPages records size bytes from gpa as pages of type t with an
// all-zero contents field (zero, unmeasured pages).
func (d *digest) emptyPages(t byte, gpa, size uint64) {
	var zero [48]byte
	for off := uint64(0); off < size; off += pageSize {
		d.update(t, gpa+off, &zero)
	}
}

func sha384Page(p *[pageSize]byte) [48]byte { return sha512.Sum384(p[:]) }
