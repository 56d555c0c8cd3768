package controlplane

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
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
	m.reg.MustRegister(m.joins, m.renewals, m.verify, m.nodes, m.watchers, m.revision)
	return m
}

// HTTPHandler serves /metrics, /healthz (the process is up) and /readyz
// (the agent listener is serving).
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.metrics.ready.Load() {
			http.Error(w, "not serving yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Registry exposes the metrics registry (tests read it).
func (s *Server) Registry() *prometheus.Registry { return s.metrics.reg }
