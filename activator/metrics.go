package activator

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infer-run/infer/internal/wire"
)

// metrics are named after vLLM's where one exists, so existing dashboards
// and alerts carry over.
type metrics struct {
	requests *prometheus.CounterVec
	queued   *prometheus.CounterVec
	ttft     *prometheus.HistogramVec
	latency  *prometheus.HistogramVec
	tpot     *prometheus.HistogramVec
	queue    *prometheus.HistogramVec
	prompt   *prometheus.CounterVec
	gen      *prometheus.CounterVec
	waiting  *prometheus.GaugeVec
	running  *prometheus.GaugeVec
	resends  *prometheus.CounterVec
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
	m.tpot = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "infer_time_per_output_token_seconds",
		Help:    "Mean time between output tokens of a request, after the first.",
		Buckets: []float64{.001, .0025, .005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, 1},
	}, []string{"deployment"})
	m.queue = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "infer_request_queue_time_seconds",
		Help:    "Time from accepting a request until a runner admitted it (queue wait, cold start included).",
		Buckets: latencyBuckets,
	}, []string{"deployment"})
	m.prompt = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "infer_prompt_tokens_total",
		Help: "Prompt tokens of finished requests.",
	}, []string{"deployment"})
	m.gen = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "infer_generation_tokens_total",
		Help: "Completion tokens of finished requests.",
	}, []string{"deployment"})
	m.waiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "infer_num_requests_waiting",
		Help: "Requests this activator holds that no runner has admitted yet (queued or waiting for a cold start).",
	}, []string{"deployment"})
	m.running = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "infer_num_requests_running",
		Help: "Requests this activator relays that a runner is generating.",
	}, []string{"deployment"})
	m.resends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "infer_event_resends_total",
		Help: "Requests to runners to send events again that were lost on the way (a NATS outage).",
	}, []string{"deployment"})
	reg.MustRegister(m.requests, m.queued, m.ttft, m.latency, m.tpot, m.queue, m.prompt, m.gen, m.waiting, m.running, m.resends)
	return m
}

// finished records a request that ended with usage u, having taken total,
// with its first token after ttft (0 if none).
func (m *metrics) finished(deployment, status string, total, ttft time.Duration, u wire.Usage) {
	m.requests.WithLabelValues(deployment, status).Inc()
	m.latency.WithLabelValues(deployment).Observe(total.Seconds())
	m.prompt.WithLabelValues(deployment).Add(float64(u.PromptTokens))
	m.gen.WithLabelValues(deployment).Add(float64(u.CompletionTokens))
	if ttft > 0 && u.CompletionTokens > 1 {
		m.tpot.WithLabelValues(deployment).Observe((total - ttft).Seconds() / float64(u.CompletionTokens-1))
	}
}
