package agent

import (
	"github.com/confmesh/confmesh/internal/netfilter"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reg       *prometheus.Registry
	peers     *prometheus.GaugeVec
	refusals  *prometheus.CounterVec
	handshake *prometheus.GaugeVec
	rx, tx    *prometheus.GaugeVec
	renewals  *prometheus.CounterVec
	// state is 1 for the node's standing with the control plane.
	state *prometheus.GaugeVec
	// cpRefusals counts the control plane's refusals of this node.
	cpRefusals *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "confmesh_agent_peers", Help: "Peers by state (verified, refused).",
		}, []string{"state"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confmesh_agent_peer_refusals_total", Help: "Peer verifications that failed, by reason.",
		}, []string{"reason"}),
		handshake: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "confmesh_agent_peer_last_handshake_seconds", Help: "Unix time of the latest WireGuard handshake per peer.",
		}, []string{"peer"}),
		rx: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "confmesh_agent_peer_receive_bytes", Help: "Bytes received from each peer.",
		}, []string{"peer"}),
		tx: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "confmesh_agent_peer_transmit_bytes", Help: "Bytes sent to each peer.",
		}, []string{"peer"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confmesh_agent_renewals_total", Help: "Node SVID renewals by result.",
		}, []string{"result"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "confmesh_agent_state", Help: "1 for this node's standing with the control plane (joining, active, revoked, refused).",
		}, []string{"state"}),
		cpRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confmesh_agent_controlplane_refusals_total", Help: "Joins and renewals of this node the control plane refused, by operation and reason.",
		}, []string{"op", "reason"}),
	}
	m.reg.MustRegister(m.peers, m.refusals, m.handshake, m.rx, m.tx, m.renewals, m.state, m.cpRefusals)
	return m
}

// registerStrictDrops exports the strict-mode drop counters of the nftables
// table: packets that would have left (out) or entered (in) in plaintext.
func (m *metrics) registerStrictDrops(table string) {
	for _, dir := range []string{"out", "in"} {
		dir := dir
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "confmesh_agent_strict_drops_total",
			Help:        "Packets strict mode dropped because they would have bypassed WireGuard.",
			ConstLabels: prometheus.Labels{"direction": dir},
		}, func() float64 {
			out, in, err := netfilter.Counters(table)
			if err != nil {
				return 0
			}
			if dir == "out" {
				return float64(out)
			}
			return float64(in)
		}))
	}
}
