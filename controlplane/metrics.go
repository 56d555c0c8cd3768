package controlplane

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	reg      *prometheus.Registry
	joins    *prometheus.CounterVec
	renewals *prometheus.CounterVec
	verify   prometheus.Histogram
	nodes    *prometheus.GaugeVec
	watchers prometheus.Gauge
	revision prometheus.Gauge
	ready    atomic.Bool

	reports           *prometheus.CounterVec
	challengeRefusals *prometheus.CounterVec
	rateLimited       *prometheus.CounterVec

	storeSynced prometheus.Gauge
	storeBreaks prometheus.Counter
	storeSyncs  prometheus.Counter
	leader      prometheus.Gauge
	sweeps      prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confmesh_controlplane_joins_total", Help: "Join attempts by result and refusal reason.",
		}, []string{"result", "reason"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confmesh_controlplane_renewals_total", Help: "Renew attempts by result and refusal reason.",
		}, []string{"result", "reason"}),
		verify: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "confmesh_controlplane_verify_seconds", Help: "Time to verify one node's evidence.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}),
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "confmesh_controlplane_nodes", Help: "Known nodes by state.",
		}, []string{"state"}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "confmesh_controlplane_watchers", Help: "Open peer-set watch streams.",
		}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "confmesh_controlplane_revision", Help: "Current peer-set revision.",
		}),
	}
	m.reports = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "confmesh_controlplane_attestation_reports_total", Help: "Reports the control plane's own TEE produced (at most one per evidence epoch), by result.",
	}, []string{"result"})
	m.challengeRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "confmesh_controlplane_challenge_refusals_total", Help: "Challenge calls refused by the rate limiter, and challenges answered in a join or renewal that were refused, by reason.",
	}, []string{"reason"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "confmesh_controlplane_rate_limited_total", Help: "Unauthenticated-capable calls (Challenge, Join) refused by the per-source rate limit, by method.",
	}, []string{"method"})
	m.storeSynced = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "confmesh_controlplane_store_synced", Help: "1 while this replica's node cache is in step with its store, or a store that is not shared answers its probes.",
	})
	m.storeSynced.Set(1)
	m.storeBreaks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "confmesh_controlplane_store_watch_breaks_total", Help: "Times the shared store's watch broke after being synced.",
	})
	m.storeSyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "confmesh_controlplane_store_lists_total", Help: "Times the shared store was listed into the node cache (start and after every broken watch).",
	})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "confmesh_controlplane_leader", Help: "1 while this replica holds the store's leader lease and runs the periodic sweep.",
	})
	m.sweeps = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "confmesh_controlplane_sweeps_total", Help: "Re-evaluation sweeps this replica ran.",
	})
	// The Go runtime's and the process's own figures (go_goroutines,
	// process_resident_memory_bytes, ...): what a leak shows in first.
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(m.storeSynced, m.storeBreaks, m.storeSyncs, m.leader, m.sweeps)
	m.reg.MustRegister(m.reports, m.challengeRefusals, m.rateLimited)
	m.reg.MustRegister(m.joins, m.renewals, m.verify, m.nodes, m.watchers, m.revision)
	return m
}

// HTTPHandler serves /metrics, /healthz (the process is up) and /readyz
// (the agent listener is serving and the replica admits joins: its shared
// store's watch is synced, or the probes of a store that is not shared
// succeed, or it broke or went silent less than StoreSyncGrace ago).
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.metrics.ready.Load() {
			http.Error(w, "not serving yet", http.StatusServiceUnavailable)
			return
		}
		if ok, _, why := s.storeState(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Registry exposes the metrics registry (tests read it).
func (s *Server) Registry() *prometheus.Registry { return s.metrics.reg }
