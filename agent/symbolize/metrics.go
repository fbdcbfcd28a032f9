package symbolize

import "github.com/prometheus/client_golang/prometheus"

type symMetrics struct {
	mapsReads  prometheus.Counter
	loads      prometheus.Counter
	loadErrors prometheus.Counter
	procs      prometheus.Gauge
	objects    prometheus.Gauge
	kernelSyms prometheus.Gauge
}

func newSymMetrics(reg prometheus.Registerer) *symMetrics {
	m := &symMetrics{
		mapsReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_symbolize_maps_reads_total",
			Help: "Reads of /proc/<pid>/maps.",
		}),
		loads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_symbolize_object_loads_total",
			Help: "ELF files opened and indexed.",
		}),
		loadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_symbolize_object_load_errors_total",
			Help: "ELF files that could not be opened or parsed.",
		}),
		procs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetprof_symbolize_processes",
			Help: "Processes whose mappings are cached.",
		}),
		objects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetprof_symbolize_objects",
			Help: "ELF files whose symbols are cached.",
		}),
		kernelSyms: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetprof_symbolize_kernel_symbols",
			Help: "Kernel text symbols loaded from kallsyms.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.mapsReads, m.loads, m.loadErrors, m.procs, m.objects, m.kernelSyms} {
			_ = reg.Register(c)
		}
	}
	return m
}
