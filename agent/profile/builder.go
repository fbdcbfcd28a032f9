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

// gzipper reuses one gzip writer and buffer across profiles (a fresh
// gzip.Writer allocates about 600 KiB), and one protobuf encoder that
// writes the group straight into a reused buffer (pprof's own builds
// string and id tables and objects per profile).
type gzipper struct {
	mu  sync.Mutex
	enc encoder
	out bytes.Buffer
	w   *gzip.Writer
}

func (z *gzipper) encode(g *group) ([]byte, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	raw := z.enc.marshal(g)
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

// group accumulates one profile in compact records (ids are 1-based
// indexes), encoded straight to protobuf at the end of the window: no
// per-sample or per-location allocation.
type group struct {
	labels map[string]string
	total  int64
	period int64
	start  int64 // ns since the epoch
	dur    int64 // ns

	mappings  []mappingRec
	mapIDs    map[*symbolize.Mapping]uint32
	kernelMap uint32
	locs      []locationRec
	locIDs    map[locKey]uint32
	user      map[userKey]uint32
	funcs     []string
	funcIDs   map[string]uint32

	// stacks holds the location ids of every sample back to back;
	// sample i's are stacks[samples[i-1].end:samples[i].end].
	stacks  []uint64
	samples []sampleRec
}

type mappingRec struct {
	start, limit, offset uint64
	file, buildID        string
}

type locationRec struct {
	addr    uint64
	mapping uint32 // 0: none
	fn      uint32 // 0: unnamed
}

type sampleRec struct {
	end   int
	count int64
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
		labels:  labels,
		period:  period,
		start:   w.Start.UnixNano(),
		dur:     w.End.Sub(w.Start).Nanoseconds(),
		mapIDs:  map[*symbolize.Mapping]uint32{},
		locIDs:  map[locKey]uint32{},
		user:    map[userKey]uint32{},
		funcIDs: map[string]uint32{},
	}
}

func (b *Builder) addSample(g *group, proc *symbolize.Process, s *sampler.Sample, kernel map[uint64]string) {
	for i, addr := range s.Kernel {
		key := locKey{kern: true, addr: addr}
		loc := g.locIDs[key]
		if loc == 0 {
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
		g.stacks = append(g.stacks, uint64(loc))
	}
	for i, addr := range s.User {
		ukey := userKey{proc: proc, addr: addr, ret: i > 0}
		loc := g.user[ukey]
		if loc == 0 {
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
			if loc = g.locIDs[key]; loc == 0 {
				var pm uint32
				if m != nil {
					pm = g.mapping(m)
				}
				loc = g.location(key, pm, name)
			}
			g.user[ukey] = loc
		}
		g.stacks = append(g.stacks, uint64(loc))
	}
	g.samples = append(g.samples, sampleRec{end: len(g.stacks), count: int64(s.Count)})
	g.total += int64(s.Count)
}

func (g *group) kernel() uint32 {
	if g.kernelMap == 0 {
		g.mappings = append(g.mappings, mappingRec{
			start: 0xffff800000000000,
			limit: 0xffffffffffffffff,
			file:  kernelMappingFile,
		})
		g.kernelMap = uint32(len(g.mappings))
	}
	return g.kernelMap
}

func (g *group) mapping(m *symbolize.Mapping) uint32 {
	id := g.mapIDs[m]
	if id == 0 {
		g.mappings = append(g.mappings, mappingRec{
			start:   m.Start,
			limit:   m.Limit,
			offset:  m.Offset,
			file:    m.Path,
			buildID: m.BuildID,
		})
		id = uint32(len(g.mappings))
		g.mapIDs[m] = id
	}
	return id
}

func (g *group) location(key locKey, mapping uint32, name string) uint32 {
	loc := locationRec{addr: key.addr, mapping: mapping}
	if name != "" {
		fn := g.funcIDs[name]
		if fn == 0 {
			g.funcs = append(g.funcs, name)
			fn = uint32(len(g.funcs))
			g.funcIDs[name] = fn
		}
		loc.fn = fn
	}
	g.locs = append(g.locs, loc)
	id := uint32(len(g.locs))
	g.locIDs[key] = id
	return id
}

// encode gzips the profile's protobuf.
func (g *group) encode(gz *gzipper) ([]byte, error) {
	return gz.encode(g)
}
