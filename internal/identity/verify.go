package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// VerifySVID verifies an X.509-SVID chain (leaf first, then any
// intermediates) against bundle at time now with go-spiffe's
// x509svid.Verify, and returns the leaf's SPIFFE ID. A zero now means the
// current time. It fails for an empty chain, a nil bundle, a leaf without
// exactly one SPIFFE URI SAN, a CA leaf, a leaf from another trust domain, a
// chain that does not reach the bundle, and a certificate outside its
// validity period at now.
func VerifySVID(chain []*x509.Certificate, bundle *x509bundle.Bundle, now time.Time) (spiffeid.ID, error) {
	switch {
	case len(chain) == 0:
		return spiffeid.ID{}, errors.New("verify SVID: empty certificate chain")
	case bundle == nil:
		return spiffeid.ID{}, errors.New("verify SVID: no trust bundle")
	}
	for i, c := range chain {
		if c == nil {
			return spiffeid.ID{}, fmt.Errorf("verify SVID: certificate %d of the chain is nil", i)
		}
	}
	var opts []x509svid.VerifyOption
	if !now.IsZero() {
		opts = append(opts, x509svid.WithTime(now))
	}
	id, _, err := x509svid.Verify(chain, bundle, opts...)
	if err != nil {
		if !id.IsZero() {
			return spiffeid.ID{}, fmt.Errorf("verify SVID %s: %w", id, err)
		}
		return spiffeid.ID{}, fmt.Errorf("verify SVID: %w", err)
	}
	return id, nil
}

// ParseChain parses DER certificates (leaf first), naming the position of
// any that fails. An empty list is an error.
func ParseChain(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("parse chain: no certificates")
	}
	certs := make([]*x509.Certificate, 0, len(ders))
	for i, der := range ders {
		if len(der) == 0 {
			return nil, fmt.Errorf("parse chain: certificate %d is empty", i)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parse chain: certificate %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// ChainDER returns the DER encodings of certs, in order; nil certificates are
// skipped. The slices alias the certificates' Raw bytes.
func ChainDER(certs ...*x509.Certificate) [][]byte {
	out := make([][]byte, 0, len(certs))
	for _, c := range certs {
		if c != nil {
			out = append(out, c.Raw)
		}
	}
	return out
}
