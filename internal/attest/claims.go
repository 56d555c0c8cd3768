package attest

import "time"

// TEE types evidence may carry.
const (
	TEESevSnp = "sev-snp"
	TEESimSnp = "sim-snp"
	TEETDX    = "tdx"
)

// Claims is what a verified report says about the machine that produced it.
// Byte fields render as lower-case hex in JSON. ReportedTCB and LaunchTCB
// are decoded with the TCB layout of Product.
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
