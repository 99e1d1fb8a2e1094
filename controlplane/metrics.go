package controlplane

import "github.com/prometheus/client_golang/prometheus"

// metrics explain scaling: how many runners each deployment has in each
// phase, how often they start and fail, and how long a cold start takes.
type metrics struct {
	runners   *prometheus.GaugeVec
	starts    *prometheus.CounterVec
	failures  *prometheus.CounterVec
	coldStart *prometheus.HistogramVec
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
	}
	if reg != nil {
		reg.MustRegister(m.runners, m.starts, m.failures, m.coldStart)
	}
	return m
}
