package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var quiet = slog.New(slog.DiscardHandler)

var (
	pcOnce   sync.Once
	pcSimCA  *sim.CA
	pcRoot   string
	pcErr    error
	pcMeas   = bytes.Repeat([]byte{0x33}, 48)
	pcTD     = spiffeid.RequireTrustDomainFromString("cluster.test")
	pcSPIFFE *identity.CA
)

func pcFixture(t *testing.T) {
	t.Helper()
	pcOnce.Do(func() {
		dir, err := os.MkdirTemp("", "confmesh-agent-test-")
		if err != nil {
			pcErr = err
			return
		}
		if pcSimCA, pcErr = sim.NewTestCA(""); pcErr != nil {
			return
		}
		if pcErr = pcSimCA.Save(filepath.Join(dir, "ca")); pcErr != nil {
			return
		}
		pcRoot = pcSimCA.RootPath()
		pcSPIFFE, pcErr = identity.NewCA(pcTD, time.Now())
	})
	if pcErr != nil {
		t.Fatal(pcErr)
	}
}

func pcPolicy(measurements ...[]byte) *attest.Policy {
	p := &attest.Policy{TrustDomain: "cluster.test", AllowedVMPLs: []uint32{0}, MaxEvidenceAge: attest.Duration(10 * time.Minute),
		TrustedRoots: []attest.RootRef{{Kind: attest.RootSimulated, File: pcRoot}}}
	for _, m := range measurements {
		p.Measurements = append(p.Measurements, m)
	}
	return p
}

// peerRecord builds a record as an honest control plane would: evidence
// bound to the WireGuard key and SVID key, SVID claims from the verified
// evidence.
func peerRecord(t *testing.T, name string, cfg sim.NodeConfig) *cpv1.Peer {
	t.Helper()
	if cfg.Measurement == nil {
		cfg.Measurement = pcMeas
	}
	node, err := pcSimCA.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svidKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wgKey := make([]byte, 32)
	rand.Read(wgKey)
	idHash, _ := identity.SPKIHash(svidKey.Public())
	ch, _ := attest.NewChallenge(time.Now())
	ev, err := attest.Attest(node, attest.Binding{Purpose: attest.PurposeJoin, Challenge: ch, IdentityKeyHash: idHash, Name: name, Key: wgKey}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The control plane's policy is lax: it accepts anything signed.
	lax := pcPolicy(cfg.Measurement)
	lax.AllowDebug = true
	v, err := attest.NewVerifier(lax, attest.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	att, err := v.Verify(ev, attest.Expect{Purpose: attest.PurposeJoin, Key: wgKey, IdentityKeyHash: idHash, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := identity.NodeID(pcTD, name)
	claims := identity.ClaimsFromAttestation(att, wgKey, id)
	cert, err := pcSPIFFE.IssueSVID(identity.IssueRequest{PublicKey: svidKey.Public(), ID: id, TTL: time.Hour, Now: time.Now(), Claims: &claims})
	if err != nil {
		t.Fatal(err)
	}
	return &cpv1.Peer{Name: name, Endpoint: "198.18.0.2:51820", WireguardPublicKey: wgKey, PodCidrs: []string{"10.244.2.0/24"},
		Svid: [][]byte{cert.Raw}, Evidence: ev, AttestedAt: timestamppb.Now(), ExpiresAt: timestamppb.New(cert.NotAfter)}
}

func checker(t *testing.T, p *attest.Policy) *PeerChecker {
	t.Helper()
	v, err := attest.NewVerifier(p, attest.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return &PeerChecker{TrustDomain: pcTD, Bundle: pcSPIFFE.Bundle(), Verifier: v,
		ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), LocalCIDR: netip.MustParsePrefix("10.244.1.0/24"), Now: time.Now}
}

func TestPeerCheckAcceptsHonestPeer(t *testing.T) {
	pcFixture(t)
	rec := peerRecord(t, "node-b", sim.NodeConfig{})
	d, att, err := checker(t, pcPolicy(pcMeas)).Check(rec)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "node-b" || !bytes.Equal(d.PublicKey[:], rec.WireguardPublicKey) || d.Endpoint.String() != "198.18.0.2:51820" ||
		len(d.AllowedIPs) != 1 || d.AllowedIPs[0].String() != "10.244.2.0/24" || !bytes.Equal(att.Measurement, pcMeas) {
		t.Fatalf("desired peer %+v", d)
	}
}

// TestPeerCheckRefuses: a control plane that hands out a forged or
// non-compliant peer gets that peer refused, each for its own reason.
func TestPeerCheckRefuses(t *testing.T) {
	pcFixture(t)
	otherCA, err := identity.NewCA(pcTD, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(p *cpv1.Peer)
		node   sim.NodeConfig
		want   error
	}{
		{"debug peer admitted by a lax control plane", nil, sim.NodeConfig{Debug: true}, attest.ErrDebug},
		{"unapproved measurement", nil, sim.NodeConfig{Measurement: bytes.Repeat([]byte{0x44}, 48)}, attest.ErrMeasurement},
		{"WireGuard key swapped by the control plane", func(p *cpv1.Peer) { p.WireguardPublicKey = bytes.Repeat([]byte{7}, 32) }, sim.NodeConfig{}, attest.ErrWrongKey},
		{"name swapped", func(p *cpv1.Peer) { p.Name = "node-z" }, sim.NodeConfig{}, ErrPeerSVID},
		{"SVID from another CA", func(p *cpv1.Peer) {
			leaf, _ := x509.ParseCertificate(p.Svid[0])
			id, _ := identity.NodeID(pcTD, "node-b")
			cl, _ := identity.ClaimsFromCert(leaf)
			c, _ := otherCA.IssueSVID(identity.IssueRequest{PublicKey: leaf.PublicKey, ID: id, TTL: time.Hour, Claims: cl})
			p.Svid = [][]byte{c.Raw}
		}, sim.NodeConfig{}, ErrPeerSVID},
		{"evidence of another node's report", func(p *cpv1.Peer) {
			other := peerRecord(t, "node-b", sim.NodeConfig{})
			p.Evidence = other.Evidence
		}, sim.NodeConfig{}, attest.ErrWrongNonce},
		{"SVID claims that do not match the evidence", func(p *cpv1.Peer) {
			leaf, _ := x509.ParseCertificate(p.Svid[0])
			id, _ := identity.NodeID(pcTD, "node-b")
			cl, _ := identity.ClaimsFromCert(leaf)
			cl.Measurement = bytes.Repeat([]byte{0x55}, 48)
			c, err := pcSPIFFE.IssueSVID(identity.IssueRequest{PublicKey: leaf.PublicKey, ID: id, TTL: time.Hour, Claims: cl})
			if err != nil {
				t.Fatal(err)
			}
			p.Svid = [][]byte{c.Raw}
		}, sim.NodeConfig{}, ErrPeerClaims},
		{"pod CIDR outside the cluster", func(p *cpv1.Peer) { p.PodCidrs = []string{"192.168.0.0/24"} }, sim.NodeConfig{}, ErrPeerAddressing},
		{"pod CIDR overlapping ours", func(p *cpv1.Peer) { p.PodCidrs = []string{"10.244.0.0/16"} }, sim.NodeConfig{}, ErrPeerAddressing},
		{"no evidence", func(p *cpv1.Peer) { p.Evidence = nil }, sim.NodeConfig{}, attest.ErrWrongNonce},
		{"bad endpoint", func(p *cpv1.Peer) { p.Endpoint = "nowhere" }, sim.NodeConfig{}, ErrPeerAddressing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := peerRecord(t, "node-b", tc.node)
			if tc.mutate != nil {
				rec = proto.Clone(rec).(*cpv1.Peer)
				tc.mutate(rec)
			}
			_, _, err := checker(t, pcPolicy(pcMeas)).Check(rec)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if PeerReason(err) == "other" {
				t.Errorf("no reason label for %v", err)
			}
		})
	}
}
