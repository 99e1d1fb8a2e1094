package controlplane

import "github.com/prometheus/client_golang/prometheus"

// metrics explain scaling: how many runners each deployment has in each
// phase, how often they start and fail, and how long a cold start takes.
type metrics struct {
	runners   *prometheus.GaugeVec
	starts    *prometheus.CounterVec
	failures  *prometheus.CounterVec
	coldStart *prometheus.HistogramVec
	leader    prometheus.Gauge

	coldStartPhase *prometheus.HistogramVec
	fetchSeconds   *prometheus.HistogramVec
	fetchedBytes   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		runners: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "infer_runners",
			Help: "Runners by deployment and phase (starting, fetching, loading, ready, draining).",
		}, []string{"deployment", "phase"}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infer_runner_starts_total",
			Help: "Runners started by the control plane.",
		}, []string{"deployment"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infer_runner_failures_total",
			Help: "Runners that reported they could not start or serve.",
		}, []string{"deployment"}),
		coldStart: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infer_cold_start_seconds",
			Help:    "Time from the control plane's decision to start a runner until the runner reports ready.",
			Buckets: []float64{.05, .1, .15, .2, .3, .5, .75, 1, 2, 5, 10, 30, 60, 120},
		}, []string{"deployment"}),
		coldStartPhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infer_cold_start_phase_seconds",
			Help:    "Cold start time by phase: decision, start (process or pod), fetch (weights), load (model), attach (queue), first_token.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .2, .5, 1, 2, 5, 10, 30, 60},
		}, []string{"deployment", "phase"}),
		fetchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infer_weights_fetch_seconds",
			Help:    "Time a starting runner took to fetch its weights (near zero when cached on the host).",
			Buckets: []float64{.001, .01, .05, .1, .5, 1, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"deployment"}),
		fetchedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infer_weights_fetched_bytes_total",
			Help: "Weight bytes downloaded from the object store by starting runners (cache hits add nothing).",
		}, []string{"deployment"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infer_controlplane_leader",
			Help: "1 while this control plane holds the lease and acts, 0 while it stands by.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.leader, m.coldStartPhase, m.fetchSeconds, m.fetchedBytes)
		reg.MustRegister(m.runners, m.starts, m.failures, m.coldStart)
	}
	return m
}
