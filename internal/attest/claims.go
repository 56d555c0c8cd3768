package attest

import (
	"time"

	"github.com/google/go-sev-guest/kds"
)

// TEE types evidence may carry.
const (
	TEESevSnp = "sev-snp"
	TEESimSnp = "sim-snp"
	TEETDX    = "tdx"
)

// TCB is a TCB version with its parts decomposed.
type TCB struct {
	Raw        uint64 `json:"raw"`
	Bootloader uint8  `json:"bootloader"`
	TEE        uint8  `json:"tee"`
	SNP        uint8  `json:"snp"`
	Microcode  uint8  `json:"microcode"`
}

func tcbFrom(v uint64) TCB {
	p := kds.DecomposeTCBVersion(kds.TCBVersion(v))
	return TCB{Raw: v, Bootloader: p.BlSpl, TEE: p.TeeSpl, SNP: p.SnpSpl, Microcode: p.UcodeSpl}
}

// Claims is what a verified report says about the machine that produced it.
// Byte fields render as lower-case hex in JSON.
type Claims struct {
	TEE            string    `json:"tee"`
	Product        string    `json:"product"`
	Root           string    `json:"root"`
	Simulated      bool      `json:"simulated"`
	ReportVersion  uint32    `json:"reportVersion"`
	Measurement    HexBytes  `json:"measurement"`
	HostData       HexBytes  `json:"hostData"`
	ReportData     HexBytes  `json:"reportData"`
	ReportedTCB    TCB       `json:"reportedTCB"`
	LaunchTCB      TCB       `json:"launchTCB"`
	ChipID         HexBytes  `json:"chipID"`
	GuestPolicy    uint64    `json:"guestPolicy"`
	Debug          bool      `json:"debug"`
	SMTAllowed     bool      `json:"smtAllowed"`
	SMTEnabled     bool      `json:"smtEnabled"`
	MigrationAgent bool      `json:"migrationAgent"`
	VMPL           uint32    `json:"vmpl"`
	ReportID       HexBytes  `json:"reportID"`
	ReportDigest   HexBytes  `json:"reportDigest"`
	Signer         string    `json:"signer"`
	IssuedAt       time.Time `json:"issuedAt,omitzero"`
}
