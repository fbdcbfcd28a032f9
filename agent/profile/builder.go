package profile

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pprof "github.com/google/pprof/profile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/fleetprof/fleetprof/agent/sampler"
	"github.com/fleetprof/fleetprof/agent/symbolize"
)

// Labels every profile carries (a target's own labels may set them too).
const (
	LabelNode = "node"
	LabelPID  = "pid"
	LabelComm = "comm"
	LabelExe  = "exe"
)

// kernelMappingFile names the synthetic mapping of kernel frames.
const kernelMappingFile = "[kernel.kallsyms]"

// BuilderOptions configures a Builder. The zero value gives the defaults.
type BuilderOptions struct {
	// Node is the value of the node label; "" leaves it out.
	Node string
	// Logger receives warnings; nil means zap.NewNop().
	Logger *zap.Logger
	// Registerer receives the builder's and symbolizer's metrics; nil
	// means don't register.
	Registerer prometheus.Registerer
	// MaxObjects bounds the cached ELF symbol tables; 0 means 256.
	MaxObjects int
	// MaxProcesses bounds the cached process mappings; 0 means 4096.
	MaxProcesses int
	// ProcFS is where procfs is mounted; "" means /proc.
	ProcFS string
}

// TargetFunc maps a sampled pid to its target's labels; ok=false means the
// pid is not selected and its samples are dropped.
type TargetFunc func(pid uint32) (labels map[string]string, ok bool)

// Profile is one gzipped pprof profile of one target for one window.
type Profile struct {
	Labels   map[string]string
	Start    time.Time
	Duration time.Duration
	// Samples is the number of CPU samples in the profile.
	Samples int64
	// Data is the gzipped pprof protobuf.
	Data []byte
}

// Builder turns sampler windows into pprof profiles. It owns a
// symbolizer. Build and Observe may be called concurrently.
type Builder struct {
	sym  *symbolize.Symbolizer
	node string
	log  *zap.Logger
	m    *builderMetrics
	gz   gzipper
}

// gzipper reuses one gzip writer and buffer across profiles: a fresh
// gzip.Writer allocates about 600 KiB.
// The protobuf is written by a lean encoder into a reused buffer rather
// than by pprof's (which builds string and id tables per profile).
type gzipper struct {
	mu  sync.Mutex
	enc encoder
	out bytes.Buffer
	w   *gzip.Writer
}

func (z *gzipper) encode(p *pprof.Profile) ([]byte, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	raw := z.enc.marshal(p)
	z.out.Reset()
	if z.w == nil {
		// BestSpeed: its state is much smaller to reset per profile, and
		// profiles are small; about 20% larger output than the default.
		z.w, _ = gzip.NewWriterLevel(&z.out, gzip.BestSpeed)
	} else {
		z.w.Reset(&z.out)
	}
	if _, err := z.w.Write(raw); err != nil {
		return nil, fmt.Errorf("gzip profile: %w", err)
	}
	if err := z.w.Close(); err != nil {
		return nil, fmt.Errorf("gzip profile: %w", err)
	}
	return bytes.Clone(z.out.Bytes()), nil
}

// NewBuilder returns a Builder.
func NewBuilder(opts BuilderOptions) (*Builder, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	sym, err := symbolize.New(symbolize.Options{
		Logger:       opts.Logger,
		Registerer:   opts.Registerer,
		MaxObjects:   opts.MaxObjects,
		MaxProcesses: opts.MaxProcesses,
		ProcFS:       opts.ProcFS,
	})
	if err != nil {
		return nil, fmt.Errorf("new symbolizer: %w", err)
	}
	// Kernel symbols are needed by the first window: load them at start.
	// Without them (kptr_restrict, no procfs) kernel frames stay unnamed,
	// which the symbolizer has logged.
	_ = sym.LoadKernelSymbols()
	return &Builder{sym: sym, node: opts.Node, log: opts.Logger, m: newBuilderMetrics(opts.Registerer)}, nil
}

// Observe snapshots a new process's mappings now; wire it to
// sampler.Options.OnNewPID so processes that exit mid-window still get
// their frames symbolized.
func (b *Builder) Observe(pid uint32) { b.sym.Observe(pid) }

// Close releases the symbolizer's caches.
func (b *Builder) Close() error { return b.sym.Close() }

// Build returns one profile per distinct label set among the selected
// pids of w, in a stable order (by labels).
func (b *Builder) Build(w *sampler.Window, target TargetFunc) ([]Profile, error) {
	defer b.sym.EndWindow()
	if w.FrequencyHz <= 0 {
		return nil, fmt.Errorf("window frequency %d Hz: must be positive", w.FrequencyHz)
	}
	period := int64(time.Second) / int64(w.FrequencyHz)

	type pidInfo struct {
		ok     bool
		group  *group
		proc   *symbolize.Process
		labels map[string]string
	}
	pids := map[uint32]*pidInfo{}
	groups := map[string]*group{}
	kernel := map[uint64]string{}

	// Process comm: the main thread's name when the snapshot has none.
	mainComm := map[uint32]string{}
	for i := range w.Samples {
		s := &w.Samples[i]
		if _, ok := mainComm[s.PID]; !ok || s.TID == s.PID {
			mainComm[s.PID] = s.Comm
		}
	}

	for i := range w.Samples {
		s := &w.Samples[i]
		pi, ok := pids[s.PID]
		if !ok {
			pi = &pidInfo{}
			pids[s.PID] = pi
			labels, sel := target(s.PID)
			if sel {
				pi.ok = true
				pi.proc, _ = b.sym.Process(s.PID)
				pi.labels = b.labels(s.PID, labels, pi.proc, mainComm[s.PID])
				key := labelKey(pi.labels)
				g := groups[key]
				if g == nil {
					g = newGroup(pi.labels, w, period)
					groups[key] = g
				}
				pi.group = g
			}
		}
		if !pi.ok {
			continue
		}
		b.addSample(pi.group, pi.proc, s, kernel)
	}

	out := make([]Profile, 0, len(groups))
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		g := groups[key]
		data, err := g.encode(&b.gz)
		if err != nil {
			return nil, fmt.Errorf("encode profile of %s: %w", key, err)
		}
		out = append(out, Profile{
			Labels:   g.labels,
			Start:    w.Start,
			Duration: w.End.Sub(w.Start),
			Samples:  g.total,
			Data:     data,
		})
	}
	b.m.profiles.Add(float64(len(out)))
	return out, nil
}

func (b *Builder) labels(pid uint32, target map[string]string, p *symbolize.Process, comm string) map[string]string {
	l := make(map[string]string, len(target)+4)
	maps.Copy(l, target)
	set := func(k, v string) {
		if _, ok := l[k]; !ok && v != "" {
			l[k] = v
		}
	}
	set(LabelNode, b.node)
	set(LabelPID, strconv.FormatUint(uint64(pid), 10))
	if p != nil {
		set(LabelComm, p.Comm)
		set(LabelExe, p.Exe)
	}
	set(LabelComm, comm)
	return l
}

func labelKey(l map[string]string) string {
	var sb strings.Builder
	for _, k := range slices.Sorted(maps.Keys(l)) {
		fmt.Fprintf(&sb, "%s=%q,", k, l[k])
	}
	return sb.String()
}

// group accumulates one profile.
type group struct {
	labels    map[string]string
	p         *pprof.Profile
	total     int64
	period    int64
	mappings  map[*symbolize.Mapping]*pprof.Mapping
	kernelMap *pprof.Mapping
	locs      map[locKey]*pprof.Location
	user      map[userKey]*pprof.Location
	funcs     map[string]*pprof.Function
}

type userKey struct {
	proc *symbolize.Process
	addr uint64
	ret  bool // a return address (not the leaf)
}

type locKey struct {
	m    *symbolize.Mapping // nil for kernel or unmapped
	kern bool
	addr uint64
}

func newGroup(labels map[string]string, w *sampler.Window, period int64) *group {
	return &group{
		labels: labels,
		period: period,
		p: &pprof.Profile{
			SampleType: []*pprof.ValueType{
				{Type: "samples", Unit: "count"},
				{Type: "cpu", Unit: "nanoseconds"},
			},
			DefaultSampleType: "cpu",
			PeriodType:        &pprof.ValueType{Type: "cpu", Unit: "nanoseconds"},
			Period:            period,
			TimeNanos:         w.Start.UnixNano(),
			DurationNanos:     w.End.Sub(w.Start).Nanoseconds(),
		},
		mappings: map[*symbolize.Mapping]*pprof.Mapping{},
		locs:     map[locKey]*pprof.Location{},
		user:     map[userKey]*pprof.Location{},
		funcs:    map[string]*pprof.Function{},
	}
}

func (b *Builder) addSample(g *group, proc *symbolize.Process, s *sampler.Sample, kernel map[uint64]string) {
	locs := make([]*pprof.Location, 0, len(s.Kernel)+len(s.User))
	for i, addr := range s.Kernel {
		key := locKey{kern: true, addr: addr}
		loc := g.locs[key]
		if loc == nil {
			name, ok := kernel[addr]
			if !ok {
				lookup := addr
				if i > 0 {
					lookup-- // return address: look up the call
				}
				name = b.sym.Kernel(lookup)
				kernel[addr] = name
			}
			b.m.frame("kernel", name != "")
			loc = g.location(key, g.kernel(), name)
		}
		locs = append(locs, loc)
	}
	for i, addr := range s.User {
		ukey := userKey{proc: proc, addr: addr, ret: i > 0}
		loc := g.user[ukey]
		if loc == nil {
			var m *symbolize.Mapping
			var name string
			if proc != nil {
				lookup := addr
				if i > 0 {
					lookup-- // return address: look up the call
				}
				m, name = b.sym.Resolve(proc, lookup)
			}
			b.m.frame("user", name != "")
			key := locKey{m: m, addr: addr}
			if loc = g.locs[key]; loc == nil {
				var pm *pprof.Mapping
				if m != nil {
					pm = g.mapping(m)
				}
				loc = g.location(key, pm, name)
			}
			g.user[ukey] = loc
		}
		locs = append(locs, loc)
	}
	g.p.Sample = append(g.p.Sample, &pprof.Sample{
		Location: locs,
		Value:    []int64{int64(s.Count), int64(s.Count) * g.period},
	})
	g.total += int64(s.Count)
}

func (g *group) kernel() *pprof.Mapping {
	if g.kernelMap == nil {
		g.kernelMap = &pprof.Mapping{
			Start:        0xffff800000000000,
			Limit:        0xffffffffffffffff,
			File:         kernelMappingFile,
			HasFunctions: true,
		}
		g.p.Mapping = append(g.p.Mapping, g.kernelMap)
	}
	return g.kernelMap
}

func (g *group) mapping(m *symbolize.Mapping) *pprof.Mapping {
	pm := g.mappings[m]
	if pm == nil {
		pm = &pprof.Mapping{
			Start:        m.Start,
			Limit:        m.Limit,
			Offset:       m.Offset,
			File:         m.Path,
			BuildID:      m.BuildID,
			HasFunctions: true,
		}
		g.mappings[m] = pm
		g.p.Mapping = append(g.p.Mapping, pm)
	}
	return pm
}

func (g *group) location(key locKey, m *pprof.Mapping, name string) *pprof.Location {
	loc := &pprof.Location{Mapping: m, Address: key.addr}
	if name != "" {
		fn := g.funcs[name]
		if fn == nil {
			fn = &pprof.Function{Name: name, SystemName: name}
			g.funcs[name] = fn
			g.p.Function = append(g.p.Function, fn)
		}
		loc.Line = []pprof.Line{{Function: fn}}
	}
	g.locs[key] = loc
	g.p.Location = append(g.p.Location, loc)
	return loc
}

// encode numbers everything 1..N, validates and gzips the profile.
func (g *group) encode(gz *gzipper) ([]byte, error) {
	for i, m := range g.p.Mapping {
		m.ID = uint64(i + 1)
	}
	for i, l := range g.p.Location {
		l.ID = uint64(i + 1)
	}
	for i, f := range g.p.Function {
		f.ID = uint64(i + 1)
	}
	if err := g.p.CheckValid(); err != nil {
		return nil, fmt.Errorf("invalid profile: %w", err)
	}
	return gz.encode(g.p)
}
