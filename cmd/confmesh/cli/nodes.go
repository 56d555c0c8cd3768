package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/config"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// defaultAdminDir is where `confmesh controlplane` with its default state
// directory writes the admin credential.
var defaultAdminDir = filepath.Join(config.DefaultStateDir, config.AdminDirName)

type adminFlags struct {
	socket  string
	dir     string
	timeout time.Duration
}

func newNodesCmd() *cobra.Command {
	var af adminFlags
	var output string
	var all bool
	cmd := &cobra.Command{
		Use:   "nodes [--all] [-o text|json]",
		Short: "List the control plane's nodes (--all: revoked and refused too); 'nodes remove NAME' forgets one, 'nodes revoke NAME' bans one",
		Long: `List every node the control plane knows, active or rejected, through its
Admin service on the local unix socket. With --all, also revoked nodes
(state revoked, since the revocation) and recently refused joins (state
refused: one entry per claimed name with the latest reason and time and a
count; the control plane keeps at most 256 names, in memory).

The connection is mutual TLS: this command presents the admin credential
(admin.crt, admin.key) that the control plane wrote into <state-dir>/admin,
and accepts the server only if its certificate chains to that directory's
bundle.crt and carries the control plane's SPIFFE ID
(spiffe://<trust-domain>/confmesh/controlplane). Run it as the user that can
read the credential (usually root).

Text output is a table: NAME STATE ENDPOINT POD-CIDR TEE MEASUREMENT (first
16 hex digits) ATTESTED EXPIRES REASON; times are RFC 3339 UTC. With --all,
the REASON of a revoked or refused entry starts with its time (and the
refusal count). JSON output is an array of objects whose byte fields are
lower-case hex and whose times are RFC 3339 (since, refusals: --all).

Exit codes: 0 success; 1 the control plane is unreachable (the message names
the socket), refused the credential, or refused the operation; 2 usage error
or an admin credential that cannot be read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			return runNodesList(cmd.Context(), cmd.OutOrStdout(), &af, output, all)
		},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&af.socket, "admin-socket", config.DefaultAdminSocket, "control plane Admin service unix socket `PATH`")
	pf.StringVar(&af.dir, "admin-dir", defaultAdminDir, "admin credential `DIR` (admin.crt, admin.key, bundle.crt)")
	pf.DurationVar(&af.timeout, "timeout", 10*time.Second, "how long to wait for the control plane")
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text or json")
	cmd.Flags().BoolVar(&all, "all", false, "also list revoked nodes and recently refused joins")

	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a node for good",
		Long: `Revoke a node: it leaves every agent's peer set at once, its pods and pod
CIDR are released, and its chip and WireGuard key can never join again (not
under this name nor any other). There is no undo: a revoked machine must be
replaced (a new chip) to rejoin.

Exit codes: 0 revoked; 1 no such node, or the control plane is unreachable
or refused; 2 usage error or an admin credential that cannot be read.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runNodesRevoke(cmd.Context(), cmd.OutOrStdout(), &af, args[0])
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Forget a node, freeing its name (not a ban)",
		Long: `Remove a node: it leaves every agent's peer set at once, its pods and pod
CIDR are released, and its name is free for the next join. Nothing is
blocked: the same chip and keys may join again (use 'revoke' to ban them).

A node name belongs to the node's identity key while the node's SVID is
valid: another VM (even on the same chip) joining under it is refused with
reason name_taken. Remove the old node first when it is gone for good (a
reinstalled VM with new keys, a replaced machine) and must not wait for its
SVID to expire. A removed node that is still running is refused by the
control plane on its next call and may join again, unless another node took
the name meanwhile.

Exit codes: 0 removed; 1 no such node, or the control plane is unreachable
or refused; 2 usage error or an admin credential that cannot be read.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runNodesRemove(cmd.Context(), cmd.OutOrStdout(), &af, args[0])
		},
	}
	cmd.AddCommand(revoke, remove)
	return cmd
}

// adminConn is a connection to the Admin service.
type adminConn struct {
	cc     *grpc.ClientConn
	client cpv1.AdminClient
	socket string
}

// dialAdmin checks that the socket exists, loads the admin credential and
// prepares the mTLS connection (gRPC connects on the first call).
func dialAdmin(af *adminFlags) (*adminConn, error) {
	socket, err := filepath.Abs(af.socket)
	if err != nil {
		return nil, usageErrorf("--admin-socket %s: %v", af.socket, err)
	}
	fi, err := os.Stat(socket)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, failf("control plane admin socket %s does not exist: is 'confmesh controlplane' running, with this --admin-socket?", socket)
	case err != nil:
		return nil, failf("control plane admin socket %s: %v", socket, err)
	case fi.Mode()&os.ModeSocket == 0:
		return nil, failf("control plane admin socket %s is not a socket", socket)
	}
	tc, err := adminTLSConfig(af.dir, time.Now)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, failf("control plane admin socket %s: %v", socket, err)
	}
	return &adminConn{cc: cc, client: cpv1.NewAdminClient(cc), socket: socket}, nil
}

// adminTLSConfig is the client side of the admin socket: it presents the
// admin credential and accepts only a server whose certificate chain
// verifies against the bundle and names the control plane's SPIFFE ID.
func adminTLSConfig(dir string, now func() time.Time) (*tls.Config, error) {
	certPath := filepath.Join(dir, controlplane.AdminCertFile)
	keyPath := filepath.Join(dir, controlplane.AdminKeyFile)
	bundlePath := filepath.Join(dir, controlplane.AdminBundleFile)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, usageErrorf("admin credential in %s: %v (pass --admin-dir <state-dir>/admin, and run as a user that can read it)", dir, err)
	}
	bundle, td, err := readAdminBundle(bundlePath)
	if err != nil {
		return nil, usageErrorf("admin credential in %s: %v", dir, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// SPIFFE certificates carry a URI SAN, not a host name, so the
		// standard host name check cannot apply; VerifyPeerCertificate
		// does the whole verification instead (chain to the bundle, key
		// usage, validity, the SPIFFE ID). No session cache is set, so
		// every handshake is a full one and goes through it.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verifyControlPlaneCert(bundle, identity.ControlPlaneID(td), now),
	}, nil
}

// verifyControlPlaneCert returns a tls.Config.VerifyPeerCertificate that
// requires an X.509-SVID chaining to bundle whose SPIFFE ID is want.
func verifyControlPlaneCert(bundle *x509bundle.Bundle, want spiffeid.ID, now func() time.Time) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("admin socket server presented no certificate")
		}
		chain, err := identity.ParseChain(raw)
		if err != nil {
			return fmt.Errorf("admin socket server certificate: %w", err)
		}
		id, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now()))
		if err != nil {
			return fmt.Errorf("admin socket server is not this trust domain's control plane: %w", err)
		}
		if id != want {
			return fmt.Errorf("admin socket server certificate names %s, want %s", id, want)
		}
		return nil
	}
}

// readAdminBundle reads bundle.crt (PEM CA certificates) and the trust
// domain their SPIFFE URI SAN names.
func readAdminBundle(path string) (*x509bundle.Bundle, spiffeid.TrustDomain, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, spiffeid.TrustDomain{}, err
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, spiffeid.TrustDomain{}, fmt.Errorf("%s: %v", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("%s: no PEM certificate", path)
	}
	if len(certs[0].URIs) != 1 {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("%s: the CA certificate has %d URI SANs, want one (spiffe://<trust-domain>)", path, len(certs[0].URIs))
	}
	id, err := spiffeid.FromURI(certs[0].URIs[0])
	if err != nil {
		return nil, spiffeid.TrustDomain{}, fmt.Errorf("%s: CA URI SAN: %v", path, err)
	}
	return x509bundle.FromX509Authorities(id.TrustDomain(), certs), id.TrustDomain(), nil
}

// callError maps a failed Admin call to exit 1 with a message naming the socket.
func (c *adminConn) callError(err error, timeout time.Duration) error {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unavailable:
		return failf("cannot reach the control plane at %s: %s", c.socket, st.Message())
	case codes.DeadlineExceeded:
		return failf("the control plane at %s did not answer within %s", c.socket, timeout)
	case codes.Unauthenticated, codes.PermissionDenied:
		return failf("the control plane at %s refused the admin credential: %s", c.socket, st.Message())
	}
	return failf("control plane at %s: %s: %s", c.socket, st.Code(), st.Message())
}

func runNodesList(ctx context.Context, out io.Writer, af *adminFlags, format string, all bool) error {
	c, err := dialAdmin(af)
	if err != nil {
		return err
	}
	defer c.cc.Close()
	ctx, cancel := context.WithTimeout(ctx, af.timeout)
	defer cancel()
	resp, err := c.client.ListNodes(ctx, &cpv1.ListNodesRequest{All: all})
	if err != nil {
		return c.callError(err, af.timeout)
	}
	if format == formatJSON {
		list := make([]nodeJSON, 0, len(resp.GetNodes()))
		for _, n := range resp.GetNodes() {
			list = append(list, toNodeJSON(n))
		}
		return writeJSON(out, list)
	}
	return writeNodesTable(out, resp.GetNodes())
}

func runNodesRevoke(ctx context.Context, out io.Writer, af *adminFlags, name string) error {
	return runNodeAdmin(ctx, out, af, name, func(ctx context.Context, c cpv1.AdminClient) error {
		_, err := c.RevokeNode(ctx, &cpv1.RevokeNodeRequest{Name: name})
		return err
	}, "revoked: it left the peer set; its chip and WireGuard key may never join again")
}

func runNodesRemove(ctx context.Context, out io.Writer, af *adminFlags, name string) error {
	return runNodeAdmin(ctx, out, af, name, func(ctx context.Context, c cpv1.AdminClient) error {
		_, err := c.RemoveNode(ctx, &cpv1.RemoveNodeRequest{Name: name})
		return err
	}, "removed: it left the peer set; its name and pod CIDR are free (its chip and keys are not blocked)")
}

// runNodeAdmin makes one admin call about node name and, when it succeeds,
// prints `node "name" done`; an unknown node is named as such.
func runNodeAdmin(ctx context.Context, out io.Writer, af *adminFlags, name string, call func(context.Context, cpv1.AdminClient) error, done string) error {
	c, err := dialAdmin(af)
	if err != nil {
		return err
	}
	defer c.cc.Close()
	ctx, cancel := context.WithTimeout(ctx, af.timeout)
	defer cancel()
	if err := call(ctx, c.client); err != nil {
		if status.Code(err) == codes.NotFound {
			return failf("no node %q at the control plane at %s", name, c.socket)
		}
		return c.callError(err, af.timeout)
	}
	fmt.Fprintf(out, "node %q %s\n", name, done)
	return nil
}

// nodeJSON is one node in `nodes -o json`.
type nodeJSON struct {
	Name               string `json:"name"`
	State              string `json:"state"`
	Reason             string `json:"reason"`
	Endpoint           string `json:"endpoint"`
	PodCIDR            string `json:"podCIDR"`
	TEE                string `json:"tee"`
	Measurement        string `json:"measurement"`
	ChipID             string `json:"chipID"`
	WireGuardPublicKey string `json:"wireguardPublicKey"`
	AttestedAt         string `json:"attestedAt"`
	ExpiresAt          string `json:"expiresAt"`
	Since              string `json:"since,omitempty"`    // revoked or refused at
	Refusals           uint32 `json:"refusals,omitempty"` // refused joins under this name
}

func rfc3339(ts *timestamppb.Timestamp) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return ""
	}
	t := ts.AsTime()
	if t.IsZero() || t.Unix() <= 0 {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func toNodeJSON(n *cpv1.Node) nodeJSON {
	return nodeJSON{
		Name: n.GetName(), State: n.GetState(), Reason: n.GetReason(), Endpoint: n.GetEndpoint(), PodCIDR: n.GetPodCidr(),
		TEE: n.GetTee(), Measurement: hex.EncodeToString(n.GetMeasurement()), ChipID: hex.EncodeToString(n.GetChipId()),
		WireGuardPublicKey: hex.EncodeToString(n.GetWireguardPublicKey()),
		AttestedAt:         rfc3339(n.GetAttestedAt()), ExpiresAt: rfc3339(n.GetExpiresAt()),
		Since: rfc3339(n.GetSince()), Refusals: n.GetRefusals(),
	}
}

// nodeReason is the REASON column: a revoked or refused entry's time (and
// count) first.
func nodeReason(n *cpv1.Node) string {
	r := n.GetReason()
	switch {
	case n.GetRefusals() > 0:
		r = fmt.Sprintf("%s (x%d): %s", rfc3339(n.GetSince()), n.GetRefusals(), r)
	case n.GetSince() != nil:
		r = fmt.Sprintf("%s: %s", rfc3339(n.GetSince()), r)
	}
	return r
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeNodesTable(out io.Writer, nodes []*cpv1.Node) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tENDPOINT\tPOD-CIDR\tTEE\tMEASUREMENT\tATTESTED\tEXPIRES\tREASON")
	for _, n := range nodes {
		m := hex.EncodeToString(n.GetMeasurement())
		if len(m) > 16 {
			m = m[:16]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			n.GetName(), dash(n.GetState()), dash(n.GetEndpoint()), dash(n.GetPodCidr()), dash(n.GetTee()), dash(m),
			dash(rfc3339(n.GetAttestedAt())), dash(rfc3339(n.GetExpiresAt())), dash(nodeReason(n)))
	}
	if err := tw.Flush(); err != nil {
		return failf("write output: %v", err)
	}
	return nil
}
