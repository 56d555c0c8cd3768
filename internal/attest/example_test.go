package attest_test

import (
	"crypto/ecdh"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

// exampleBinding holds the inputs of the worked example in
// docs/attestation.md ("Binding: a worked example"). Every input is fixed,
// so the digests below are too; docs_test.go checks that the document
// shows the same numbers.
type exampleBinding struct {
	purpose      attest.Purpose
	challenge    []byte
	identitySPKI []byte
	keyHash      []byte
	name         string
	wgKey        []byte
}

func newExampleBinding() exampleBinding {
	// challenge = 8 bytes big-endian Unix time of issue || 24 random bytes;
	// here the time is 2026-11-27T00:00:00Z and the "random" bytes 01..18.
	issued := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	challenge := make([]byte, attest.ChallengeSize)
	binary.BigEndian.PutUint64(challenge, uint64(issued.Unix()))
	for i := 8; i < attest.ChallengeSize; i++ {
		challenge[i] = byte(i - 7)
	}
	// The identity key is a P-256 key whose private scalar is 32 bytes of
	// 0x01; what enters the nonce is SHA-256 of its SubjectPublicKeyInfo.
	scalar := make([]byte, 32)
	for i := range scalar {
		scalar[i] = 0x01
	}
	priv, err := ecdh.P256().NewPrivateKey(scalar)
	if err != nil {
		panic(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(priv.PublicKey())
	if err != nil {
		panic(err)
	}
	// The WireGuard public key: 32 fixed bytes, 0x40..0x5f.
	wg := make([]byte, attest.KeySize)
	for i := range wg {
		wg[i] = byte(0x40 + i)
	}
	return exampleBinding{
		purpose:      attest.PurposeJoin,
		challenge:    challenge,
		identitySPKI: spki,
		keyHash:      attest.KeyHash(spki),
		name:         "node-a",
		wgKey:        wg,
	}
}

// Example_binding computes the binding of the worked example in
// docs/attestation.md: nonce32 from the purpose, challenge, identity key
// hash and node name, then REPORT_DATA = SHA-512(nonce32 || WireGuard key).
func Example_binding() {
	b := newExampleBinding()
	nonce, err := attest.Nonce(b.purpose, b.challenge, b.keyHash, b.name)
	if err != nil {
		panic(err)
	}
	rd, err := attest.ReportData(nonce[:], b.wgKey)
	if err != nil {
		panic(err)
	}
	fmt.Printf("challenge          %x\n", b.challenge)
	fmt.Printf("identity SPKI      %x\n", b.identitySPKI)
	fmt.Printf("identity key hash  %x\n", b.keyHash)
	fmt.Printf("wireguard key      %x (%s)\n", b.wgKey, base64.StdEncoding.EncodeToString(b.wgKey))
	preimage := append([]byte("confmesh/v1/"+string(b.purpose)), 0)
	preimage = append(append(append(preimage, b.challenge...), b.keyHash...), b.name...)
	fmt.Printf("nonce preimage     %x (%d bytes)\n", preimage, len(preimage))
	fmt.Printf("nonce32            %x\n", nonce)
	fmt.Printf("REPORT_DATA[0:32]  %x\n", rd[:32])
	fmt.Printf("REPORT_DATA[32:64] %x\n", rd[32:])
	// Output:
	// challenge          000000006b08c8000102030405060708090a0b0c0d0e0f101112131415161718
	// identity SPKI      3059301306072a8648ce3d020106082a8648ce3d030107034200046ff03b949241ce1dadd43519e6960e0a85b41a69a05c328103aa2bce1594ca163c4f753a55bf01dc53f6c0b0c7eee78b40c6ff7d25a96e2282b989cef71c144a
	// identity key hash  f857ae4ed6e34e33761aea25caaee3fe54a15960fb92dcd63a375ab121deb2a9
	// wireguard key      404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f (QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=)
	// nonce preimage     636f6e666d6573682f76312f6a6f696e00000000006b08c8000102030405060708090a0b0c0d0e0f101112131415161718f857ae4ed6e34e33761aea25caaee3fe54a15960fb92dcd63a375ab121deb2a96e6f64652d61 (87 bytes)
	// nonce32            e92a1674be877fce82bf44aadfe24cfe153d8f064b20f94315d25bed632e74d4
	// REPORT_DATA[0:32]  dfbe1b3fa8129db14f2b29c8a552d1d9a6216b7572e74e215e198458e0948a35
	// REPORT_DATA[32:64] e4fdd67d7333b4671f73e195ebc8c22ba408bf8db968791e6d3120a872011278
}
