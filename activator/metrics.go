package activator

import "github.com/prometheus/client_golang/prometheus"

// metrics are named after vLLM's where one exists, so existing dashboards
// and alerts carry over.
type metrics struct {
	requests *prometheus.CounterVec
	queued   *prometheus.CounterVec
	ttft     *prometheus.HistogramVec
	latency  *prometheus.HistogramVec
}

// latencyBuckets span a warm token (milliseconds) to a cold start of a big
// model (a minute).
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .2, .3, .5, .75, 1, 2, 5, 10, 20, 30, 60}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infer_requests_total",
			Help: "Completion requests by deployment and outcome (ok, error, queue_full, timeout, cancelled).",
		}, []string{"deployment", "status"}),
		queued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infer_requests_queued_total",
			Help: "Requests put on a deployment's JetStream queue.",
		}, []string{"deployment"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infer_time_to_first_token_seconds",
			Help:    "Time from accepting a request to relaying its first token, cold starts included.",
			Buckets: latencyBuckets,
		}, []string{"deployment"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infer_e2e_request_latency_seconds",
			Help:    "Time from accepting a request to its last byte.",
			Buckets: latencyBuckets,
		}, []string{"deployment"}),
	}
	reg.MustRegister(m.requests, m.queued, m.ttft, m.latency)
	return m
}
