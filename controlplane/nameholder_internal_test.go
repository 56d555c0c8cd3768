package controlplane

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
)

// TestNameHolder pins who may join under a name on record.
func TestNameHolder(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	holderKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(1)}, &x509.Certificate{SerialNumber: big.NewInt(1)}, holderKey.Public(), holderKey)
	if err != nil {
		t.Fatal(err)
	}
	chipA, chipB, masked := bytes.Repeat([]byte{1}, 64), bytes.Repeat([]byte{2}, 64), make([]byte, 64)
	rec := func(chip []byte, expires time.Time) *store.NodeRecord {
		return &store.NodeRecord{Name: "node-a", ChipID: chip, SVID: [][]byte{der}, ExpiresAt: expires, State: store.StateActive}
	}
	valid, expired := now.Add(30*time.Minute), now.Add(-time.Second)
	for _, tc := range []struct {
		name    string
		prev    *store.NodeRecord
		chip    []byte
		key     *ecdsa.PrivateKey
		same    bool
		refused string
	}{
		{"restart: same key, same chip", rec(chipA, valid), chipA, holderKey, true, ""},
		{"restart after expiry", rec(chipA, expired), chipA, holderKey, true, ""},
		{"masked chips, same key", rec(masked, valid), masked, holderKey, true, ""},
		{"same chip, other key, SVID valid", rec(chipA, valid), chipA, otherKey, false, "another identity key on the same chip"},
		{"other chip, other key, SVID valid", rec(chipA, valid), chipB, otherKey, false, "another chip"},
		{"other chip, same key (copied state), SVID valid", rec(chipA, valid), chipB, holderKey, false, "another chip"},
		{"masked chips, other key, SVID valid", rec(masked, valid), masked, otherKey, false, "same chip"},
		{"same chip, other key, SVID expired", rec(chipA, expired), chipA, otherKey, false, ""},
		{"other chip, SVID expired", rec(chipA, expired), chipB, otherKey, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			same, rf := nameHolder(tc.prev, tc.chip, tc.key.Public(), now)
			if same != tc.same {
				t.Errorf("same = %v, want %v", same, tc.same)
			}
			switch {
			case tc.refused == "" && rf != nil:
				t.Errorf("refused: %v", rf)
			case tc.refused != "" && rf == nil:
				t.Error("accepted")
			case rf != nil:
				for _, want := range []string{tc.refused, "until 2026-12-01T12:30:00Z", "confmesh nodes remove node-a", "name_taken"} {
					if want == "name_taken" {
						if rf.reason != want {
							t.Errorf("reason %q, want %q", rf.reason, want)
						}
						continue
					}
					if !strings.Contains(rf.Error(), want) {
						t.Errorf("refusal %q lacks %q", rf.Error(), want)
					}
				}
			}
		})
	}
}
