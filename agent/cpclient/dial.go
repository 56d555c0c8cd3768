// Package cpclient is the agent's side of the control plane protocol. It
// trusts nothing the control plane says until the control plane's own
// evidence, bound to the TLS key of this very connection, passes the
// agent's local policy.
package cpclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"sync"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// ErrControlPlaneRefused means the control plane's evidence did not pass
// the agent's policy or was not bound to the TLS key it presented.
var ErrControlPlaneRefused = errors.New("control plane refused")

// Config says where the control plane is and how to judge it.
type Config struct {
	// Addr is host:port of the control plane's agent listener.
	Addr string
	// Verifier holds the agent's own policy; the control plane's evidence is
	// checked with its ForControlPlane verifier (the policy's control-plane
	// measurements), never with the node measurement list.
	Verifier *attest.Verifier
	// TrustDomain names the expected control plane identity.
	TrustDomain spiffeid.TrustDomain
	// Bundle, once the agent has joined, must sign the server certificate.
	Bundle *x509bundle.Bundle
	// ClientCertificate, once joined, is the node SVID offered for mTLS.
	ClientCertificate func() (*tls.Certificate, error)
	// Now replaces the clock (tests).
	Now func() time.Time
}

// Conn is an attested connection to the control plane.
type Conn struct {
	cc     *grpc.ClientConn
	cfg    Config
	pin    *pin
	Client cpv1.ControlPlaneClient
	// Claims describe the control plane's verified TEE.
	Claims *attest.Claims

	// pending is the challenge Dial obtained while attesting the control
	// plane; the first Join or Renew on this connection uses it instead of
	// asking again.
	pending   []byte
	pendingAt time.Time

	// evidence is what this node last attested with on this connection.
	evidence *attestv1.Evidence
}

// Evidence returns the evidence the last Join or Renew on this connection
// sent for the node (nil before either), so the agent can show what its
// own TEE reports.
func (c *Conn) Evidence() *attestv1.Evidence { return c.evidence }

// freshChallenge returns the pending challenge if it is young enough to be
// answered, else asks the control plane for a new one (re-attesting it).
func (c *Conn) freshChallenge(ctx context.Context) ([]byte, error) {
	if ch := c.pending; ch != nil {
		c.pending = nil
		if c.cfg.Now().Sub(c.pendingAt) < 30*time.Second {
			return ch, nil
		}
	}
	return c.Challenge(ctx)
}

// pin remembers the server key of the first handshake; later handshakes
// (gRPC reconnects) must present the same key, or they fail: a restarted
// control plane has a new key and must be attested again through Dial.
type pin struct {
	mu   sync.Mutex
	spki []byte
}

func (p *pin) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spki
}

// Dial connects, asks for the control plane's evidence bound to the TLS key
// of this connection and a fresh nonce, and verifies it under the agent's
// policy. Nothing else is sent before that passes.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	cfg.Now = now
	cpv, err := cfg.Verifier.ForControlPlane()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrControlPlaneRefused, attest.Reason(err), err)
	}
	cfg.Verifier = cpv
	p := &pin{}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The server is authenticated below: by its attestation (always)
		// and by the trust bundle (once joined).
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("control plane presented no certificate")
			}
			leaf := cs.PeerCertificates[0]
			if cfg.Bundle != nil {
				id, _, err := x509svid.Verify(cs.PeerCertificates, cfg.Bundle, x509svid.WithTime(now()))
				if err != nil {
					return fmt.Errorf("control plane certificate: %w", err)
				}
				if id != identity.ControlPlaneID(cfg.TrustDomain) {
					return fmt.Errorf("control plane certificate names %s, want %s", id, identity.ControlPlaneID(cfg.TrustDomain))
				}
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.spki == nil {
				p.spki = bytes.Clone(leaf.RawSubjectPublicKeyInfo)
				return nil
			}
			if !bytes.Equal(p.spki, leaf.RawSubjectPublicKeyInfo) {
				return errors.New("control plane TLS key changed since it was attested; dial again")
			}
			return nil
		},
	}
	if cfg.ClientCertificate != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cfg.ClientCertificate() }
	}
	cc, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, fmt.Errorf("dial control plane %s: %w", cfg.Addr, err)
	}
	c := &Conn{cc: cc, cfg: cfg, pin: p, Client: cpv1.NewControlPlaneClient(cc)}
	ch, err := c.Challenge(ctx)
	if err != nil {
		cc.Close()
		return nil, err
	}
	c.pending, c.pendingAt = ch, now()
	return c, nil
}

// Challenge asks the control plane for a fresh challenge, re-verifying its
// evidence: bound to this connection's TLS key (which the control plane
// makes at start and never lets out of its TEE) and no older than
// attest.MaxControlPlaneEvidenceAge. The control plane produces that
// evidence once per epoch for every caller, so it answers no nonce of ours;
// the TLS handshake proves the key is live now, the age bounds how long ago
// the TEE vouched for it.
func (c *Conn) Challenge(ctx context.Context) ([]byte, error) {
	resp, err := c.Client.Challenge(ctx, &cpv1.ChallengeRequest{})
	if err != nil {
		return nil, fmt.Errorf("control plane challenge: %w", err)
	}
	spki := c.pin.get()
	if spki == nil {
		return nil, fmt.Errorf("%w: no TLS handshake recorded", ErrControlPlaneRefused)
	}
	keyHash := attest.KeyHash(spki)
	claims, err := c.cfg.Verifier.Verify(resp.GetEvidence(), attest.Expect{
		Purpose: attest.PurposeControlPlane, Key: keyHash, IdentityKeyHash: keyHash,
		Name: identity.ControlPlaneID(c.cfg.TrustDomain).String(),
	})
	if err == nil {
		err = attest.CheckControlPlaneEvidenceAge(claims.IssuedAt, c.cfg.Now())
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrControlPlaneRefused, attest.Reason(err), err)
	}
	c.Claims = claims
	if len(resp.GetChallenge()) != attest.ChallengeSize {
		return nil, fmt.Errorf("control plane sent a %d-byte challenge", len(resp.GetChallenge()))
	}
	return resp.GetChallenge(), nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.cc.Close() }

// Addr is the address (HOST:PORT) this connection dialed.
func (c *Conn) Addr() string { return c.cfg.Addr }

// ServerKeyHash is SHA-256 of the attested TLS key.
func (c *Conn) ServerKeyHash() []byte { return attest.KeyHash(c.pin.get()) }

// ParseBundle builds a go-spiffe bundle from DER authorities.
func ParseBundle(td spiffeid.TrustDomain, ders [][]byte) (*x509bundle.Bundle, error) {
	var certs []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("trust bundle: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("trust bundle is empty")
	}
	return x509bundle.FromX509Authorities(td, certs), nil
}
