package cli

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeAgent answers Status on the local API with a fixed response.
type fakeAgent struct {
	agentv1.UnimplementedAgentServer
	st *agentv1.StatusResponse
}

func (a *fakeAgent) Status(context.Context, *agentv1.StatusRequest) (*agentv1.StatusResponse, error) {
	return a.st, nil
}

// serveFakeAgent serves st on a fresh agent socket and returns its path.
func serveFakeAgent(t *testing.T, st *agentv1.StatusResponse) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	agentv1.RegisterAgentServer(srv, &fakeAgent{st: st})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return sock
}

func TestStatusAndPeers(t *testing.T) {
	handshake := time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	sock := serveFakeAgent(t, &agentv1.StatusResponse{
		NodeName: "node-a", Attested: true, Tee: "sim-snp", Measurement: bytes.Repeat([]byte{0xab}, 48),
		SvidExpiry: timestamppb.New(handshake.Add(time.Hour)), SpiffeId: "spiffe://cluster.test/confmesh/node/node-a",
		Datapath: "kernel", StrictMode: true, PodCidr: "10.244.1.0/24", Device: "cm0", Ready: false, ReadyReason: "no peers yet",
		TrustsSimulatedRoot: true, Revision: 7, WireguardPublicKey: []byte{1, 2},
		Strict: &agentv1.StrictStatus{Enabled: true, State: "installed", Reinstalls: 2, LastReinstall: timestamppb.New(handshake),
			RouteRepairs: 3, Pods: 4, DropsOut: 5, DropsIn: 6, DropsSpoof: 7},
		State: "active", StateSince: timestamppb.New(handshake),
		ControlPlane: "198.18.0.2:7443", ControlPlanes: []string{"198.18.0.1:7443", "198.18.0.2:7443"}, ControlPlaneFailovers: 1,
		Product: "Milan", ReportedTcb: 0x0a14000000000302, // Milan bytes: bootloader 2, TEE 3, SNP 20, microcode 10
		Peers: []*agentv1.PeerStatus{
			{Name: "node-b", Endpoint: "198.18.0.2:51820", State: "verified", PodCidrs: []string{"10.244.2.0/24"},
				WireguardPublicKey: []byte{3, 4}, LatestHandshake: timestamppb.New(handshake), RxBytes: 10, TxBytes: 20,
				Product: "Turin", ReportedTcb: 0x800000007000504}, // Turin bytes: FMC 4, bootloader 5, TEE 0, SNP 7, microcode 8
			{Name: "node-c", Endpoint: "198.18.0.3:51820", State: "refused", Reason: "measurement"},
		},
	})
	peersText := "" +
		"PEER    STATE     ENDPOINT          POD-CIDRS        HANDSHAKE             RX  TX  TCB                                   REASON\n" +
		"node-b  verified  198.18.0.2:51820  [10.244.2.0/24]  2026-03-14T15:09:26Z  10  20  Turin fmc=4 bl=5 tee=0 snp=7 ucode=8  \n" +
		"node-c  refused   198.18.0.3:51820  []                                     0   0   -                                     measurement\n"
	peersJSON := `[
  {
    "name": "node-b",
    "endpoint": "198.18.0.2:51820",
    "state": "verified",
    "podCIDRs": [
      "10.244.2.0/24"
    ],
    "wireguardKey": "0304",
    "latestHandshake": "2026-03-14T15:09:26Z",
    "rxBytes": 10,
    "txBytes": 20,
    "product": "Turin",
    "reportedTCB": {
      "raw": 576460752420865284,
      "fmc": 4,
      "bootloader": 5,
      "tee": 0,
      "snp": 7,
      "microcode": 8
    }
  },
  {
    "name": "node-c",
    "endpoint": "198.18.0.3:51820",
    "state": "refused",
    "reason": "measurement",
    "podCIDRs": null,
    "wireguardKey": "",
    "rxBytes": 0,
    "txBytes": 0
  }
]
`
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status"}, "" +
			"node:        node-a\n" +
			"state:       active since 2026-03-14T15:09:26Z\n" +
			"attested:    true (sim-snp, measurement abababababababab…)\n" +
			"tcb:         Milan bl=2 tee=3 snp=20 ucode=10\n" +
			"identity:    spiffe://cluster.test/confmesh/node/node-a (expires 2026-03-14T16:09:26Z)\n" +
			"ctrl plane:  198.18.0.2:7443 (of 198.18.0.1:7443,198.18.0.2:7443; 1 failovers)\n" +
			"ready:       false no peers yet\n" +
			"datapath:    kernel on cm0\n" +
			"strict mode: true\n" +
			"  rules:     installed (4 pod interfaces)\n" +
			"  repairs:   2 table re-installs, last 2026-03-14T15:09:26Z, 3 routes restored\n" +
			"  drops:     out 5, in 6, spoof 7\n" +
			"pod CIDR:    10.244.1.0/24\n" +
			"WARNING:     this agent's policy trusts a SIMULATED TEE root (development only)\n" +
			peersText},
		{[]string{"status", "-o", "json"}, `{
  "node": "node-a",
  "attested": true,
  "ready": false,
  "readyReason": "no peers yet",
  "tee": "sim-snp",
  "measurement": "abababababababababababababababababababababababababababababababababababababababababababababababab",
  "spiffeID": "spiffe://cluster.test/confmesh/node/node-a",
  "svidExpiry": "2026-03-14T16:09:26Z",
  "datapath": "kernel",
  "device": "cm0",
  "strictMode": true,
  "podCIDR": "10.244.1.0/24",
  "wireguardKey": "0102",
  "trustsSimulatedRoot": true,
  "revision": 7,
  "product": "Milan",
  "reportedTCB": {
    "raw": 726205439913493250,
    "bootloader": 2,
    "tee": 3,
    "snp": 20,
    "microcode": 10
  },
  "state": "active",
  "stateSince": "2026-03-14T15:09:26Z",
  "controlPlane": "198.18.0.2:7443",
  "controlPlanes": [
    "198.18.0.1:7443",
    "198.18.0.2:7443"
  ],
  "controlPlaneFailovers": 1,
  "peers": ` + string(bytes.ReplaceAll([]byte(peersJSON[:len(peersJSON)-1]), []byte("\n"), []byte("\n  "))) + `,
  "strict": {
    "enabled": true,
    "state": "installed",
    "reinstalls": 2,
    "lastReinstall": "2026-03-14T15:09:26Z",
    "routeRepairs": 3,
    "pods": 4,
    "dropsOut": 5,
    "dropsIn": 6,
    "dropsSpoof": 7
  }
}
`},
		{[]string{"peers"}, peersText},
		{[]string{"peers", "-o", "json"}, peersJSON},
	} {
		r := run(t, append(tc.args, "--socket", sock)...)
		r.want(t, 0)
		if r.stdout != tc.want {
			t.Errorf("%v: got\n%s\nwant\n%s", tc.args, r.stdout, tc.want)
		}
	}
	for _, cmd := range []string{"status", "peers"} {
		run(t, cmd, "--socket", sock, "-o", "xml").want(t, 2, "unknown output format")
		run(t, cmd, "--socket", filepath.Join(t.TempDir(), "none.sock")).want(t, 1, "is the agent running?")
	}
}
