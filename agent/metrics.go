package agent

import (
	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/agent/health"
	"github.com/confmesh/confmesh/agent/workload"
	"github.com/confmesh/confmesh/internal/connlimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg       *prometheus.Registry
	peers     *prometheus.GaugeVec
	refusals  *prometheus.CounterVec
	handshake *prometheus.GaugeVec
	rx, tx    *prometheus.GaugeVec
	renewals  *prometheus.CounterVec

	strictReinstalls   prometheus.Counter
	strictRouteRepairs prometheus.Counter

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
	m.strictReinstalls = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "confmesh_agent_strict_reinstalls_total",
		Help: "Times the agent found the strict-mode table missing or altered and re-installed it.",
	})
	m.strictRouteRepairs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "confmesh_agent_strict_route_repairs_total",
		Help: "Deleted routes (fail-closed, pod, peer) the agent restored.",
	})
	m.reg.MustRegister(m.peers, m.refusals, m.handshake, m.rx, m.tx, m.renewals, m.state, m.cpRefusals)
	return m
}

// registerHealth exports the degraded conditions, the Workload API's
// connections and the process's file descriptors.
func (m *metrics) registerHealth(h *health.Tracker, wl func() workload.ConnStats) {
	for _, c := range conditions {
		c := c
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "confmesh_agent_degraded", Help: "1 while a periodic check of this condition fails (the node is then not ready for pods).",
			ConstLabels: prometheus.Labels{"condition": c},
		}, func() float64 {
			if h.IsFailing(c) {
				return 1
			}
			return 0
		}))
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "confmesh_agent_degraded_total", Help: "Times a periodic check of this condition started failing.",
			ConstLabels: prometheus.Labels{"condition": c},
		}, func() float64 { return float64(h.Transitions(c)) }))
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "confmesh_agent_workload_connections", Help: "Connections the SPIFFE Workload API holds open.",
	}, func() float64 { return float64(wl().Open) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "confmesh_agent_workload_connections_max_per_caller", Help: "Most connections any one caller (pod) holds open to the Workload API.",
	}, func() float64 { return float64(wl().MaxKey) }))
	for _, r := range []string{connlimit.ReasonPerKey, connlimit.ReasonTotal} {
		r := r
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "confmesh_agent_workload_connections_refused_total", Help: "Workload API connections closed at accept because a cap was reached (per-caller or total).",
			ConstLabels: prometheus.Labels{"cap": r},
		}, func() float64 { return float64(wl().Refused[r]) }))
	}
	m.reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// registerReplicas exports how often the agent moved to another
// control-plane replica.
func (m *metrics) registerReplicas(r *cpclient.Replicas) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "confmesh_agent_controlplane_failovers_total",
		Help: "Times the agent moved to another control-plane replica than the one that worked last.",
	}, func() float64 { return float64(r.Failovers()) }))
}

// registerStrict exports strict mode as the kernel has it: whether the
// table is in force, the drop counters of the nftables table (packets that
// would have left (out) or entered (in) in plaintext, or that a pod sent
// from another address (spoof)), and how often the agent had to re-install
// the table or restore routes.
func (m *metrics) registerStrict(info func() StrictInfo) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "confmesh_agent_strict_rules_installed",
		Help: "1 when the kernel holds exactly the strict-mode table the agent wants, 0 otherwise.",
	}, func() float64 {
		if info().State == StrictInstalled {
			return 1
		}
		return 0
	}))
	for _, dir := range []string{"out", "in", "spoof"} {
		dir := dir
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "confmesh_agent_strict_drops_total",
			Help:        "Packets strict mode dropped: would have bypassed WireGuard (out, in) or sent from another pod's address (spoof).",
			ConstLabels: prometheus.Labels{"direction": dir},
		}, func() float64 {
			d := info().Drops
			switch dir {
			case "out":
				return float64(d.Out)
			case "in":
				return float64(d.In)
			}
			return float64(d.Spoof)
		}))
	}
	m.reg.MustRegister(m.strictReinstalls, m.strictRouteRepairs)
}
