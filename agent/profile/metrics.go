package profile

import "github.com/prometheus/client_golang/prometheus"

type builderMetrics struct {
	profiles prometheus.Counter
	frames   *prometheus.CounterVec
}

func newBuilderMetrics(reg prometheus.Registerer) *builderMetrics {
	m := &builderMetrics{
		profiles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetprof_profile_profiles_total",
			Help: "Profiles built.",
		}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetprof_profile_frames_total",
			Help: "Distinct frames symbolized per profile, by space (user, kernel) and whether a function name was found.",
		}, []string{"space", "resolved"}),
	}
	if reg != nil {
		_ = reg.Register(m.profiles)
		_ = reg.Register(m.frames)
	}
	return m
}

func (m *builderMetrics) frame(space string, resolved bool) {
	r := "false"
	if resolved {
		r = "true"
	}
	m.frames.WithLabelValues(space, r).Inc()
}
