package sampler

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	samples    prometheus.Counter
	dropped    prometheus.Counter
	lostStacks *prometheus.CounterVec
	lostPIDs   prometheus.Counter
	windows    prometheus.Counter
	drain      prometheus.Gauge
	cpus       prometheus.Gauge
	hz         prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_sampler_samples_total",
			Help: "CPU samples taken by the eBPF program (idle excluded).",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_sampler_dropped_samples_total",
			Help: "Samples lost because the count map was full (raise CountEntries).",
		}),
		lostStacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetprof_sampler_lost_stacks_total",
			Help: "Stacks lost by bpf_get_stackid: reason=collision (bucket taken) or full.",
		}, []string{"reason"}),
		lostPIDs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_sampler_lost_new_pid_events_total",
			Help: "New-process notifications lost because the ring buffer was full.",
		}),
		windows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_sampler_windows_total",
			Help: "Windows drained and handed over.",
		}),
		drain: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetprof_sampler_last_drain_seconds",
			Help: "Time the last window's map drain took.",
		}),
		cpus: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetprof_sampler_cpus",
			Help: "CPUs with an attached perf event.",
		}),
		hz: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetprof_sampler_frequency_hz",
			Help: "Current sampling frequency.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.samples, m.dropped, m.lostStacks, m.lostPIDs, m.windows, m.drain, m.cpus, m.hz} {
			_ = reg.Register(c) // a duplicate registration keeps the first
		}
	}
	return m
}
