package attest

import "time"

// TEE types evidence may carry.
const (
	TEESevSnp = "sev-snp"
	TEESimSnp = "sim-snp"
	TEETDX    = "tdx"
	TEESimTDX = "sim-tdx"
)

// IsTDX reports whether a TEE type carries a TDX quote.
func IsTDX(tee string) bool { return tee == TEETDX || tee == TEESimTDX }

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
	// TDX holds the fields of a TDX quote; nil for SEV-SNP. For TDX,
	// Measurement is the MRTD, ChipID the PPID of the PCK certificate.
	TDX *TDXClaims `json:"tdx,omitempty"`
}

// TDXClaims are the fields of a verified TDX quote.
type TDXClaims struct {
	QuoteVersion   uint32     `json:"quoteVersion"`
	MRTD           HexBytes   `json:"mrtd"`
	RTMRs          []HexBytes `json:"rtmrs"`
	MRConfigID     HexBytes   `json:"mrConfigID"`
	MROwner        HexBytes   `json:"mrOwner"`
	MROwnerConfig  HexBytes   `json:"mrOwnerConfig"`
	MRSeam         HexBytes   `json:"mrSeam"`
	MRSignerSeam   HexBytes   `json:"mrSignerSeam"`
	SeamAttributes HexBytes   `json:"seamAttributes"`
	TDAttributes   HexBytes   `json:"tdAttributes"`
	XFAM           HexBytes   `json:"xfam"`
	TeeTCBSVN      HexBytes   `json:"teeTCBSVN"`
	TeeTCBSVN2     HexBytes   `json:"teeTCBSVN2,omitempty"`
	MRServiceTD    HexBytes   `json:"mrServiceTD,omitempty"`
	QESVN          uint16     `json:"qeSVN"`
	PCESVN         uint16     `json:"pceSVN"`
	QEVendorID     HexBytes   `json:"qeVendorID"`
	FMSPC          HexBytes   `json:"fmspc"`
	PCEID          HexBytes   `json:"pceID"`
	PPID           HexBytes   `json:"ppid"`
	PCKCertPCESVN  uint16     `json:"pckCertPCESVN"`
	PCKCertCPUSVN  HexBytes   `json:"pckCertCPUSVN"`
	// TCBStatus and QETCBStatus are computed from collateral; empty when
	// the verifier had none.
	TCBStatus   string   `json:"tcbStatus,omitempty"`
	QETCBStatus string   `json:"qeTCBStatus,omitempty"`
	AdvisoryIDs []string `json:"advisoryIDs,omitempty"`
	TCBDate     string   `json:"tcbDate,omitempty"`
}
