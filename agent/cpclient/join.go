package cpclient

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
)

// Node is what an agent proves and asks for.
type Node struct {
	Name     string
	Endpoint string
	// WireGuardKey is the node's WireGuard public key (32 bytes).
	WireGuardKey []byte
	// SVIDKey is the node's identity key; its SPKI hash is in the binding.
	SVIDKey crypto.Signer
	// Provider produces the node's evidence.
	Provider attest.Provider
}

func csrFor(key crypto.Signer) ([]byte, []byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	h, err := identity.SPKIHash(key.Public())
	if err != nil {
		return nil, nil, err
	}
	return der, h, nil
}

// attested is a fresh challenge answered: the CSR for the node's identity
// key and the evidence binding purpose, name, identity key and key.
func (c *Conn) attested(ctx context.Context, n Node, purpose attest.Purpose, key []byte) ([]byte, *attestv1.Evidence, error) {
	challenge, err := c.freshChallenge(ctx)
	if err != nil {
		return nil, nil, err
	}
	csr, idHash, err := csrFor(n.SVIDKey)
	if err != nil {
		return nil, nil, err
	}
	ev, err := attest.Attest(n.Provider, attest.Binding{Purpose: purpose, Challenge: challenge, IdentityKeyHash: idHash, Name: n.Name, Key: key}, c.cfg.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("attest: %w", err)
	}
	c.evidence = ev
	return csr, ev, nil
}

// Join attests the node (purpose "join", bound to its WireGuard key) and
// asks to be admitted. A refusal is a *Refusal.
func (c *Conn) Join(ctx context.Context, n Node) (*cpv1.JoinResponse, error) {
	csr, ev, err := c.attested(ctx, n, attest.PurposeJoin, n.WireGuardKey)
	if err != nil {
		return nil, err
	}
	resp, err := c.Client.Join(ctx, &cpv1.JoinRequest{Name: n.Name, Endpoint: n.Endpoint, WireguardPublicKey: n.WireGuardKey, Csr: csr, Evidence: ev})
	if err != nil {
		return nil, RefusalFrom("join", err)
	}
	return resp, nil
}

// Renew re-attests (purpose "renew") and asks for a new node SVID. With
// newWireGuardKey set, the evidence binds that key and the peers switch to it.
// A refusal is a *Refusal.
func (c *Conn) Renew(ctx context.Context, n Node, newWireGuardKey []byte) (*cpv1.RenewResponse, error) {
	key := n.WireGuardKey
	if newWireGuardKey != nil {
		key = newWireGuardKey
	}
	csr, ev, err := c.attested(ctx, n, attest.PurposeRenew, key)
	if err != nil {
		return nil, err
	}
	resp, err := c.Client.Renew(ctx, &cpv1.RenewRequest{Csr: csr, NewWireguardPublicKey: newWireGuardKey, Evidence: ev})
	if err != nil {
		return nil, RefusalFrom("renew", err)
	}
	return resp, nil
}
