package cli

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// fetchStatus asks the agent on its local socket (root-only, 0600: the
// socket's file mode is the access control, so no TLS).
func fetchStatus(ctx context.Context, socket string) (*agentv1.StatusResponse, error) {
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, failf("agent socket %s: %v", socket, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := agentv1.NewAgentClient(cc).Status(ctx, &agentv1.StatusRequest{})
	if err != nil {
		return nil, failf("agent socket %s: %v (is the agent running?)", socket, err)
	}
	return st, nil
}

type peerJSON struct {
	Name            string   `json:"name"`
	Endpoint        string   `json:"endpoint"`
	State           string   `json:"state"`
	Reason          string   `json:"reason,omitempty"`
	PodCIDRs        []string `json:"podCIDRs"`
	WireGuardKey    string   `json:"wireguardKey"`
	LatestHandshake string   `json:"latestHandshake,omitempty"`
	RxBytes         int64    `json:"rxBytes"`
	TxBytes         int64    `json:"txBytes"`
	// Product and ReportedTCB come from the evidence this agent verified;
	// the TCB is decoded with the product's layout (fmc only on Turin).
	Product     string      `json:"product,omitempty"`
	ReportedTCB *attest.TCB `json:"reportedTCB,omitempty"`
}

type statusJSON struct {
	Node                string `json:"node"`
	Attested            bool   `json:"attested"`
	Ready               bool   `json:"ready"`
	ReadyReason         string `json:"readyReason,omitempty"`
	TEE                 string `json:"tee"`
	Measurement         string `json:"measurement"`
	SPIFFEID            string `json:"spiffeID"`
	SVIDExpiry          string `json:"svidExpiry,omitempty"`
	Datapath            string `json:"datapath"`
	Device              string `json:"device"`
	StrictMode          bool   `json:"strictMode"`
	PodCIDR             string `json:"podCIDR"`
	WireGuardKey        string `json:"wireguardKey"`
	TrustsSimulatedRoot bool   `json:"trustsSimulatedRoot"`
	Revision            uint64 `json:"revision"`
	// State is the node's standing with the control plane: joining,
	// active, revoked or refused; StateReason the control plane's reason.
	// Product and ReportedTCB describe this node's own TEE (the TCB
	// decoded with the product's layout; fmc only on Turin).
	Product     string      `json:"product,omitempty"`
	ReportedTCB *attest.TCB `json:"reportedTCB,omitempty"`
	State       string      `json:"state"`
	StateReason string      `json:"stateReason,omitempty"`
	StateSince  string      `json:"stateSince,omitempty"`
	// ControlPlane is the control-plane replica the agent used last,
	// ControlPlanes every replica it was given, ControlPlaneFailovers
	// how often it moved from one to another.
	ControlPlane          string     `json:"controlPlane,omitempty"`
	ControlPlanes         []string   `json:"controlPlanes,omitempty"`
	ControlPlaneFailovers uint64     `json:"controlPlaneFailovers,omitempty"`
	Peers                 []peerJSON `json:"peers"`
	Strict                strictJSON `json:"strict"`
}

// strictJSON is strict mode as the agent finds it in the kernel.
type strictJSON struct {
	Enabled       bool   `json:"enabled"`
	State         string `json:"state"`
	Reason        string `json:"reason,omitempty"`
	Reinstalls    uint64 `json:"reinstalls"`
	LastReinstall string `json:"lastReinstall,omitempty"`
	RouteRepairs  uint64 `json:"routeRepairs"`
	Pods          uint32 `json:"pods"`
	DropsOut      uint64 `json:"dropsOut"`
	DropsIn       uint64 `json:"dropsIn"`
	DropsSpoof    uint64 `json:"dropsSpoof"`
}

func ts(t interface{ AsTime() time.Time }, valid bool) string {
	if !valid {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

func toPeerJSON(p *agentv1.PeerStatus) peerJSON {
	j := peerJSON{Name: p.Name, Endpoint: p.Endpoint, State: p.State, Reason: p.Reason, PodCIDRs: p.PodCidrs,
		WireGuardKey: hex.EncodeToString(p.WireguardPublicKey), LatestHandshake: ts(p.LatestHandshake, p.LatestHandshake != nil),
		RxBytes: p.RxBytes, TxBytes: p.TxBytes, Product: p.Product}
	if p.Product != "" {
		if t, err := attest.DecodeTCB(p.Product, p.ReportedTcb); err == nil {
			j.ReportedTCB = &t
		}
	}
	return j
}

// peerTCB is the compact TCB column: the product and its components (FMC
// only on Turin), the product alone where it has no SEV-SNP TCB (TDX), or
// "-" when unknown.
func peerTCB(j peerJSON) string { return compactTCB(j.Product, j.ReportedTCB) }

// compactTCB renders a product and its decoded TCB, the product alone where
// it has no SEV-SNP TCB (TDX), or "-" when unknown.
func compactTCB(product string, t *attest.TCB) string {
	if t == nil {
		if product == attest.ProductTDX {
			return product
		}
		return "-"
	}
	s := product
	if t.FMC != nil {
		s += fmt.Sprintf(" fmc=%d", *t.FMC)
	}
	return s + fmt.Sprintf(" bl=%d tee=%d snp=%d ucode=%d", t.Bootloader, t.TEE, t.SNP, t.Microcode)
}

func toStatusJSON(st *agentv1.StatusResponse) statusJSON {
	out := statusJSON{Node: st.NodeName, Attested: st.Attested, Ready: st.Ready, ReadyReason: st.ReadyReason, TEE: st.Tee,
		Measurement: hex.EncodeToString(st.Measurement), SPIFFEID: st.SpiffeId, SVIDExpiry: ts(st.SvidExpiry, st.SvidExpiry != nil),
		Datapath: st.Datapath, Device: st.Device, StrictMode: st.StrictMode, PodCIDR: st.PodCidr,
		WireGuardKey: hex.EncodeToString(st.WireguardPublicKey), TrustsSimulatedRoot: st.TrustsSimulatedRoot, Revision: st.Revision,
		State: st.State, StateReason: st.StateReason, StateSince: ts(st.StateSince, st.StateSince != nil),
		ControlPlane: st.ControlPlane, ControlPlanes: st.ControlPlanes, ControlPlaneFailovers: st.ControlPlaneFailovers,
		Peers: []peerJSON{}}
	out.Product = st.Product
	if st.Product != "" {
		if t, err := attest.DecodeTCB(st.Product, st.ReportedTcb); err == nil {
			out.ReportedTCB = &t
		}
	}
	for _, p := range st.Peers {
		out.Peers = append(out.Peers, toPeerJSON(p))
	}
	if s := st.Strict; s != nil {
		out.Strict = strictJSON{Enabled: s.Enabled, State: s.State, Reason: s.Reason, Reinstalls: s.Reinstalls,
			LastReinstall: ts(s.LastReinstall, s.LastReinstall != nil), RouteRepairs: s.RouteRepairs, Pods: s.Pods,
			DropsOut: s.DropsOut, DropsIn: s.DropsIn, DropsSpoof: s.DropsSpoof}
	}
	return out
}

func newStatusCmd() *cobra.Command {
	return newAgentStatusCmd("status", "show this node's attestation, datapath, strict mode and peers", writeStatus)
}

func newPeersCmd() *cobra.Command {
	return newAgentStatusCmd("peers", "list peers: verified or the reason they were refused, handshakes, bytes",
		func(out io.Writer, format string, st *agentv1.StatusResponse) error {
			if format == formatJSON {
				return writeJSON(out, toStatusJSON(st).Peers)
			}
			return writePeers(out, st.Peers)
		})
}

// newAgentStatusCmd is a command that asks the agent for its status (see
// fetchStatus) and has write show it in the --output format.
func newAgentStatusCmd(use, short string, write func(out io.Writer, format string, st *agentv1.StatusResponse) error) *cobra.Command {
	var socket, format string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			st, err := fetchStatus(cmd.Context(), socket)
			if err != nil {
				return err
			}
			return write(cmd.OutOrStdout(), format, st)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", defaultAgentSocket, "agent local API `PATH`")
	cmd.Flags().StringVarP(&format, "output", "o", formatText, "output format: text or json")
	return cmd
}

func writeStatus(out io.Writer, format string, st *agentv1.StatusResponse) error {
	s := toStatusJSON(st)
	if format == formatJSON {
		return writeJSON(out, s)
	}
	fmt.Fprintf(out, "node:        %s\n", s.Node)
	state := s.State
	if s.StateSince != "" {
		state += " since " + s.StateSince
	}
	if s.StateReason != "" {
		state += ": " + s.StateReason
	}
	fmt.Fprintf(out, "state:       %s\n", state)
	fmt.Fprintf(out, "attested:    %v (%s, measurement %s)\n", s.Attested, s.TEE, shorten(s.Measurement))
	if s.Product != "" {
		fmt.Fprintf(out, "tcb:         %s\n", compactTCB(s.Product, s.ReportedTCB))
	}
	fmt.Fprintf(out, "identity:    %s (expires %s)\n", s.SPIFFEID, s.SVIDExpiry)
	if len(s.ControlPlanes) > 0 {
		cp := s.ControlPlane
		if cp == "" {
			cp = "none answered yet"
		}
		fmt.Fprintf(out, "ctrl plane:  %s (of %s; %d failovers)\n", cp, strings.Join(s.ControlPlanes, ","), s.ControlPlaneFailovers)
	}
	fmt.Fprintf(out, "ready:       %v %s\n", s.Ready, s.ReadyReason)
	fmt.Fprintf(out, "datapath:    %s on %s\n", s.Datapath, s.Device)
	fmt.Fprintf(out, "strict mode: %v\n", s.StrictMode)
	if s.Strict.Enabled || s.Strict.State != "" {
		fmt.Fprintf(out, "  rules:     %s%s (%d pod interfaces)\n", s.Strict.State, map[bool]string{true: ": " + s.Strict.Reason}[s.Strict.Reason != ""], s.Strict.Pods)
		last := ""
		if s.Strict.LastReinstall != "" {
			last = ", last " + s.Strict.LastReinstall
		}
		fmt.Fprintf(out, "  repairs:   %d table re-installs%s, %d routes restored\n", s.Strict.Reinstalls, last, s.Strict.RouteRepairs)
		fmt.Fprintf(out, "  drops:     out %d, in %d, spoof %d\n", s.Strict.DropsOut, s.Strict.DropsIn, s.Strict.DropsSpoof)
	}
	fmt.Fprintf(out, "pod CIDR:    %s\n", s.PodCIDR)
	if s.TrustsSimulatedRoot {
		fmt.Fprintln(out, "WARNING:     this agent's policy trusts a SIMULATED TEE root (development only)")
	}
	return writePeers(out, st.Peers)
}

func writePeers(out io.Writer, peers []*agentv1.PeerStatus) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSTATE\tENDPOINT\tPOD-CIDRS\tHANDSHAKE\tRX\tTX\tTCB\tREASON")
	for _, p := range peers {
		j := toPeerJSON(p)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%d\t%d\t%s\t%s\n", j.Name, j.State, j.Endpoint, j.PodCIDRs, j.LatestHandshake, j.RxBytes, j.TxBytes, peerTCB(j), j.Reason)
	}
	return tw.Flush()
}

func shorten(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}
