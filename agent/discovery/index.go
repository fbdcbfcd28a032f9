package discovery

import (
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fleetprof/fleetprof/agent/discovery/cgroup"
)

// Relabeler applies relabel_configs to a label set; ok=false drops it.
// internal/relabel's compiled rules satisfy it.
type Relabeler interface {
	Process(labels map[string]string) (map[string]string, bool)
}

// Settings are the parts of the remote config that the Index applies live.
type Settings struct {
	// Selection is which targets are profiled; nil means the whole host.
	Selection *Selection
	// Relabel runs on each target's labels; nil means none.
	Relabel Relabeler
	// ExternalLabels are added to every target unless it has the label.
	ExternalLabels map[string]string
}

// IndexOptions configure an Index.
type IndexOptions struct {
	// Node is the value of the node label on every target.
	Node string
	// Settings are the initial selection, relabel rules and external labels.
	Settings Settings
	// ProcRoot is where procfs is mounted; "" means "/proc".
	ProcRoot string
	// CacheSize bounds the pid cache, in entries; 0 means 32768.
	CacheSize int
	// CacheTTL is how long a pid's answer is kept before /proc is read
	// again (pids get reused, processes change cgroup); 0 means 30s.
	CacheTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Index answers which target a sampled pid belongs to. It is safe for
// concurrent use.
type Index struct {
	node     string
	procRoot string
	size     int
	ttl      time.Duration
	now      func() time.Time

	mu       sync.RWMutex
	settings Settings
	sources  map[string][]Target
	byPath   map[string]*entry // cgroup path → target
	byCID    map[string]*entry // container id → target
	byPID    map[int]*entry    // process targets
	cache    map[uint32]cached
}

// entry is a target with its labels after relabeling.
type entry struct {
	t        *Target
	selected bool
	labels   map[string]string // final labels; nil if dropped by relabel
}

// cached is a Lookup answer.
type cached struct {
	labels  map[string]string
	ok      bool
	expires time.Time
}

// NewIndex returns an empty Index.
func NewIndex(opts IndexOptions) *Index {
	ix := &Index{
		node:     opts.Node,
		procRoot: opts.ProcRoot,
		size:     opts.CacheSize,
		ttl:      opts.CacheTTL,
		now:      opts.Now,
		settings: opts.Settings,
		sources:  map[string][]Target{},
	}
	if ix.procRoot == "" {
		ix.procRoot = "/proc"
	}
	if ix.size <= 0 {
		ix.size = 32768
	}
	if ix.ttl <= 0 {
		ix.ttl = 30 * time.Second
	}
	if ix.now == nil {
		ix.now = time.Now
	}
	ix.rebuild()
	return ix
}

// Update replaces the targets of one source.
func (ix *Index) Update(source string, targets []Target) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.sources[source] = targets
	ix.rebuild()
}

// Apply switches selection, relabel rules and external labels live.
func (ix *Index) Apply(s Settings) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.settings = s
	ix.rebuild()
}

// Selection returns the selection in force (nil: whole host).
func (ix *Index) Selection() *Selection {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.settings.Selection
}

// WholeHost reports whether no selector is set, so that every process is
// profiled as its own target.
func (ix *Index) WholeHost() bool { return ix.Selection() == nil }

// Targets returns the selected targets with their final labels (after
// relabeling), in no particular order. Whole-host and process-regex targets
// are not listed: they are found per pid.
func (ix *Index) Targets() []map[string]string {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	var out []map[string]string
	seen := map[*entry]bool{}
	for _, m := range []map[string]*entry{ix.byPath, ix.byCID} {
		for _, e := range m {
			if e.selected && e.labels != nil && !seen[e] {
				seen[e] = true
				out = append(out, maps.Clone(e.labels))
			}
		}
	}
	return out
}

// rebuild recomputes the lookup maps and clears the pid cache; ix.mu held.
func (ix *Index) rebuild() {
	ix.byPath = map[string]*entry{}
	ix.byCID = map[string]*entry{}
	ix.byPID = map[int]*entry{}
	ix.cache = map[uint32]cached{}
	sel := ix.settings.Selection
	for _, src := range []string{SourceSystemd, SourceKubernetes, SourceProcess} {
		for i := range ix.sources[src] {
			t := &ix.sources[src][i]
			e := &entry{t: t}
			switch {
			case sel == nil:
				e.selected = true
			case t.Source == SourceKubernetes:
				e.selected = sel.matchPod(t.Labels)
			case t.Source == SourceSystemd:
				e.selected = sel.MatchUnit(t.Labels[LabelSystemdUnit])
			default:
				e.selected = true
			}
			e.labels = ix.finish(t.Labels)
			// Kubernetes comes after systemd so that a container's own entry
			// wins over a unit (docker-<id>.scope) with the same cgroup.
			for _, p := range t.Cgroups {
				ix.byPath[p] = e
			}
			if id, ok := containerID(t.Labels[MetaContainerID]); ok {
				ix.byCID[id] = e
			}
			for _, pid := range t.PIDs {
				ix.byPID[pid] = e
			}
		}
	}
}

// containerID strips the "<runtime>://" prefix of a status container id.
func containerID(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	if _, id, ok := strings.Cut(s, "://"); ok {
		return id, id != ""
	}
	return s, true
}

// finish adds node and external labels, relabels and drops "__" labels; nil
// means dropped. ix.mu held.
func (ix *Index) finish(in map[string]string) map[string]string {
	l := make(map[string]string, len(in)+len(ix.settings.ExternalLabels)+1)
	maps.Copy(l, in)
	if _, ok := l[LabelNode]; !ok && ix.node != "" {
		l[LabelNode] = ix.node
	}
	for k, v := range ix.settings.ExternalLabels {
		if _, ok := l[k]; !ok {
			l[k] = v
		}
	}
	if ix.settings.Relabel != nil {
		var keep bool
		if l, keep = ix.settings.Relabel.Process(l); !keep {
			return nil
		}
	}
	for k := range l {
		if strings.HasPrefix(k, "__") {
			delete(l, k)
		}
	}
	return l
}

// Lookup returns the final labels of the target that pid belongs to;
// ok=false means the pid is not selected (or relabeling dropped it). It
// reads /proc/<pid>/cgroup once per pid and caches the answer (bounded,
// for CacheTTL, cleared when targets or settings change). The returned map
// must not be modified.
func (ix *Index) Lookup(pid uint32) (map[string]string, bool) {
	now := ix.now()
	ix.mu.RLock()
	c, hit := ix.cache[pid]
	ix.mu.RUnlock()
	if hit && now.Before(c.expires) {
		return c.labels, c.ok
	}
	cgroupData, err := os.ReadFile(filepath.Join(ix.procRoot, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		// Gone (or a thread id that /proc does not list): do not cache.
		return nil, false
	}
	lines, _ := cgroup.ParseProcCgroup(cgroupData)

	for {
		// Read comm and exe before taking the lock, when they may be needed.
		ix.mu.RLock()
		sel := ix.settings.Selection
		ix.mu.RUnlock()
		var proc map[string]string
		if sel == nil || sel.processes() {
			proc = ix.processLabels(pid)
		}
		ix.mu.Lock()
		if ix.settings.Selection != sel {
			ix.mu.Unlock() // settings changed meanwhile
			continue
		}
		res := ix.resolve(pid, lines, sel, proc)
		res.expires = now.Add(ix.ttl)
		if len(ix.cache) >= ix.size {
			clear(ix.cache)
		}
		ix.cache[pid] = res
		ix.mu.Unlock()
		return res.labels, res.ok
	}
}

// resolve computes a Lookup answer; ix.mu held.
func (ix *Index) resolve(pid uint32, lines []cgroup.Line, sel *Selection, proc map[string]string) cached {
	e := ix.match(int(pid), lines)
	var res cached
	switch {
	case sel == nil:
		// Whole host: one target per process, with its container/unit labels.
		l := proc
		if e != nil {
			for k, v := range e.t.Labels {
				if _, ok := l[k]; !ok {
					l[k] = v
				}
			}
		}
		res.labels = ix.finish(l)
	case e != nil && e.selected:
		res.labels = e.labels
	case sel.processes():
		if sel.matchProcess(proc[LabelComm], proc[LabelExe]) {
			res.labels = ix.finish(proc)
		}
	}
	res.ok = res.labels != nil
	return res
}

// match finds pid's target: by pid, by container id in a cgroup path, or by
// the deepest target cgroup containing one of its cgroups. ix.mu held.
func (ix *Index) match(pid int, lines []cgroup.Line) *entry {
	if e := ix.byPID[pid]; e != nil {
		return e
	}
	if len(ix.byCID) > 0 {
		for _, l := range lines {
			if c, ok := cgroup.ContainerID(l.Path); ok {
				if e := ix.byCID[c.ID]; e != nil {
					return e
				}
			}
		}
	}
	if len(ix.byPath) == 0 {
		return nil
	}
	for _, l := range lines {
		for p := l.Path; p != "" && p != "/"; p = p[:strings.LastIndexByte(p, '/')] {
			if e := ix.byPath[p]; e != nil {
				return e
			}
		}
	}
	return nil
}

// processLabels reads pid, comm and exe of a process.
func (ix *Index) processLabels(pid uint32) map[string]string {
	dir := filepath.Join(ix.procRoot, strconv.FormatUint(uint64(pid), 10))
	comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
	exe, _ := os.Readlink(filepath.Join(dir, "exe"))
	return map[string]string{
		LabelPID:  strconv.FormatUint(uint64(pid), 10),
		LabelComm: strings.TrimSuffix(string(comm), "\n"),
		LabelExe:  exe,
	}
}

// Sweep drops cached answers of pids that have exited. Call it once per
// profiling window.
func (ix *Index) Sweep() {
	ix.mu.RLock()
	pids := make([]uint32, 0, len(ix.cache))
	for pid := range ix.cache {
		pids = append(pids, pid)
	}
	ix.mu.RUnlock()
	var dead []uint32
	for _, pid := range pids {
		if _, err := os.Stat(filepath.Join(ix.procRoot, strconv.FormatUint(uint64(pid), 10))); err != nil {
			dead = append(dead, pid)
		}
	}
	ix.mu.Lock()
	for _, pid := range dead {
		delete(ix.cache, pid)
	}
	ix.mu.Unlock()
}
