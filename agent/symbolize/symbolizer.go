package symbolize

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// idleWindows is how many windows a live process's snapshot is kept
// without samples.
const idleWindows = 6

// Errors the Symbolizer may wrap.
var (
	// ErrNoProcess means the process is gone and was never snapshot.
	ErrNoProcess = errors.New("no such process")
)

// Options configures a Symbolizer. The zero value gives the defaults.
type Options struct {
	// Logger receives debug and warning logs; nil means zap.NewNop().
	Logger *zap.Logger
	// Registerer receives the symbolizer's metrics; nil means don't register.
	Registerer prometheus.Registerer
	// MaxObjects bounds the ELF files whose symbol tables are cached
	// (one per build id, else per device and inode); 0 means 256.
	MaxObjects int
	// MaxProcesses bounds the processes whose mappings are kept; 0 means
	// 4096. Processes that exited are dropped a window after their last
	// sample, live ones after idleWindows windows without one.
	MaxProcesses int
	// ProcFS is where procfs is mounted; "" means /proc.
	ProcFS string
}

// Symbolizer resolves kernel and user addresses. Its methods are safe for
// concurrent use.
type Symbolizer struct {
	log    *zap.Logger
	procfs string
	m      *symMetrics

	mu       sync.Mutex
	gen      uint64 // window generation, advanced by EndWindow
	procs    *lru[uint32, *Process]
	objects  *lru[string, *object] // by "dev:inode"
	byID     map[string]string     // build id -> objects key
	kernel   *Kallsyms
	kernErr  error
	modules  []byte // /proc/modules at the last kallsyms load
	kernLoad bool
	noQuery  bool   // the kernel has no PROCMAP_QUERY
	nameBuf  []byte // path buffer for PROCMAP_QUERY
}

// procmapNameBytes is the size of the path buffer for PROCMAP_QUERY
// (PATH_MAX).
const procmapNameBytes = 4096

// Process is a snapshot of one process: its name, executable and
// executable mappings, kept after it exits until its samples are built.
type Process struct {
	PID  uint32
	Comm string // from /proc/<pid>/comm at the snapshot
	Exe  string // target of /proc/<pid>/exe at the snapshot

	mappings []*Mapping
	readGen  uint64 // generation of the last maps read
	seenGen  uint64 // generation of the last use
}

// Mappings returns the executable mappings of the snapshot.
func (p *Process) Mappings() []*Mapping { return p.mappings }

// New returns a Symbolizer. It reads nothing until first used.
func New(opts Options) (*Symbolizer, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.MaxObjects == 0 {
		opts.MaxObjects = 256
	}
	if opts.MaxProcesses == 0 {
		opts.MaxProcesses = 4096
	}
	if opts.ProcFS == "" {
		opts.ProcFS = "/proc"
	}
	if opts.MaxObjects < 1 || opts.MaxProcesses < 1 {
		return nil, fmt.Errorf("cache sizes must be positive (objects %d, processes %d)", opts.MaxObjects, opts.MaxProcesses)
	}
	s := &Symbolizer{
		log:    opts.Logger,
		procfs: opts.ProcFS,
		m:      newSymMetrics(opts.Registerer),
		byID:   map[string]string{},
	}
	s.procs = newLRU[uint32, *Process](opts.MaxProcesses, nil)
	s.objects = newLRU(opts.MaxObjects, func(key string, o *object) {
		if o != nil && o.buildID != "" && s.byID[o.buildID] == key {
			delete(s.byID, o.buildID)
		}
	})
	return s, nil
}

// Observe snapshots the mappings of pid now (a new process, or one that
// just exec'd), so its frames resolve even if it exits before the window
// is built. Errors are logged at debug level: the process may be gone.
func (s *Symbolizer) Observe(pid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.snapshotLocked(pid); err != nil {
		s.log.Debug("snapshot process", zap.Uint32("pid", pid), zap.Error(err))
	}
}

// Process returns the snapshot of pid, taking one if there is none.
func (s *Symbolizer) Process(pid uint32) (*Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.procs.get(pid); ok {
		p.seenGen = s.gen
		return p, nil
	}
	return s.snapshotLocked(pid)
}

func (s *Symbolizer) snapshotLocked(pid uint32) (*Process, error) {
	dir := filepath.Join(s.procfs, strconv.FormatUint(uint64(pid), 10))
	f, err := os.Open(filepath.Join(dir, "maps"))
	if err != nil {
		if p, ok := s.procs.get(pid); ok {
			return p, nil // exited: keep what we had
		}
		return nil, fmt.Errorf("open maps of pid %d: %w: %w", pid, ErrNoProcess, err)
	}
	ms, err := s.readMappingsLocked(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("maps of pid %d: %w", pid, err)
	}
	s.m.mapsReads.Inc()
	p := &Process{PID: pid, mappings: ms, readGen: s.gen, seenGen: s.gen}
	if b, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil {
		p.Comm = strings.TrimSuffix(string(b), "\n")
	}
	if exe, err := os.Readlink(filepath.Join(dir, "exe")); err == nil {
		p.Exe = exe
	}
	// Load (or find in the cache) each file now, while /proc/<pid>/root
	// still leads to it.
	for _, m := range ms {
		s.attachLocked(pid, m)
	}
	s.procs.put(pid, p)
	s.m.procs.Set(float64(s.procs.len()))
	return p, nil
}

// readMappingsLocked returns the executable mappings of the open maps
// file f: by PROCMAP_QUERY where the kernel has it (it formats only the
// executable mappings, not the many data ones), else from the text.
func (s *Symbolizer) readMappingsLocked(f *os.File) ([]*Mapping, error) {
	if !s.noQuery {
		if s.nameBuf == nil {
			s.nameBuf = make([]byte, procmapNameBytes)
		}
		ms, err := queryExecMappings(f, s.nameBuf)
		if !errors.Is(err, errNoProcmapQuery) {
			return ms, err
		}
		s.noQuery = true
		s.log.Debug("reading maps as text", zap.Error(err))
	}
	return ParseMaps(f)
}

// attachLocked finds the object of m in the cache or loads it.
func (s *Symbolizer) attachLocked(pid uint32, m *Mapping) {
	if m.Inode == 0 || m.Path == "" || m.Path[0] != '/' {
		return // anonymous, [vdso], JIT
	}
	key := m.Dev + ":" + strconv.FormatUint(m.Inode, 10)
	if o, ok := s.objects.get(key); ok {
		m.obj = o
		if o != nil {
			m.BuildID = o.buildID
		}
		return
	}
	o, err := s.loadLocked(pid, m)
	if err != nil {
		s.log.Debug("load object", zap.String("path", m.Path), zap.Uint32("pid", pid), zap.Error(err))
		s.m.loadErrors.Inc()
		s.objects.put(key, nil) // don't retry the same file
		return
	}
	if o.buildID != "" {
		if other, ok := s.byID[o.buildID]; ok {
			if same, ok := s.objects.get(other); ok && same != nil {
				o = same // same binary under another inode (containers)
			}
		}
		s.byID[o.buildID] = key
	}
	s.objects.put(key, o)
	s.m.objects.Set(float64(s.objects.len()))
	m.obj = o
	m.BuildID = o.buildID
}

func (s *Symbolizer) loadLocked(pid uint32, m *Mapping) (*object, error) {
	dir := filepath.Join(s.procfs, strconv.FormatUint(uint64(pid), 10))
	var paths []string
	if !m.Deleted() {
		paths = append(paths, filepath.Join(dir, "root", m.Path))
	}
	paths = append(paths, filepath.Join(dir, "map_files", fmt.Sprintf("%x-%x", m.Start, m.Limit)))
	var errs []error
	for _, path := range paths {
		data, err := mapFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o, err := parseObject(data, true)
		if err != nil {
			unmapFile(data)
			return nil, fmt.Errorf("%s: %w", m.Path, err)
		}
		s.m.loads.Inc()
		manageObject(o)
		return o, nil
	}
	return nil, errors.Join(errs...)
}

// Resolve returns the mapping of p holding addr and the function name at
// addr ("" when unknown). Pass addr-1 for return addresses. When addr is
// outside every mapping of a live process, its maps are read again, at
// most once per window.
func (s *Symbolizer) Resolve(p *Process, addr uint64) (*Mapping, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := find(p.mappings, addr)
	if m == nil && p.readGen != s.gen {
		p.readGen = s.gen
		if np, err := s.snapshotLocked(p.PID); err == nil && np != p {
			p.mappings = np.mappings
			p.readGen = s.gen
			s.procs.put(p.PID, p)
			m = find(p.mappings, addr)
		}
	}
	if m == nil || m.obj == nil {
		return m, ""
	}
	v, ok := m.obj.vaddr(addr - m.Start + m.Offset)
	if !ok {
		return m, ""
	}
	return m, m.obj.symbol(v)
}

// LoadKernelSymbols reads /proc/kallsyms now rather than at the first
// kernel lookup (about 0.1 s of CPU), and says why kernel frames won't be
// named if they can't be.
func (s *Symbolizer) LoadKernelSymbols() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.kernLoad {
		s.loadKallsymsLocked()
	}
	return s.kernErr
}

// Kernel returns the kernel symbol at addr ("" when unknown).
func (s *Symbolizer) Kernel(addr uint64) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.kernLoad {
		s.loadKallsymsLocked()
	}
	if s.kernel == nil {
		return ""
	}
	name, _ := s.kernel.Lookup(addr)
	return name
}

func (s *Symbolizer) loadKallsymsLocked() {
	s.kernLoad = true
	s.kernErr = nil
	s.modules, _ = os.ReadFile(filepath.Join(s.procfs, "modules"))
	f, err := os.Open(filepath.Join(s.procfs, "kallsyms"))
	if err != nil {
		s.kernErr = fmt.Errorf("open kallsyms: %w", err)
		s.log.Warn("kernel frames will not be symbolized", zap.Error(s.kernErr))
		return
	}
	defer f.Close()
	k, err := ParseKallsyms(f)
	if err != nil {
		s.kernErr = err
		s.log.Warn("kernel frames will not be symbolized", zap.Error(err))
		return
	}
	if k.Len() == 0 {
		s.kernErr = errors.New("kallsyms shows no addresses (kernel.kptr_restrict; needs CAP_SYSLOG)")
		s.log.Warn("kernel frames will not be symbolized", zap.Error(s.kernErr))
	}
	s.kernel = k
	s.m.kernelSyms.Set(float64(k.Len()))
	// Parsing left ~10 MiB of garbage behind; return it to the OS now
	// rather than carry it as heap headroom (this happens once, or when
	// kernel modules change).
	debug.FreeOSMemory()
}

// EndWindow marks the end of a window: it forgets processes that exited
// and were not seen in the window just built, and reloads kallsyms on the
// next kernel lookup if kernel modules changed.
func (s *Symbolizer) EndWindow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var dead []uint32
	s.procs.each(func(pid uint32, p *Process) {
		if p.seenGen >= s.gen {
			return
		}
		if p.seenGen+idleWindows < s.gen {
			dead = append(dead, pid) // idle: snapshot again when sampled
			return
		}
		if _, err := os.Stat(filepath.Join(s.procfs, strconv.FormatUint(uint64(pid), 10))); err != nil {
			dead = append(dead, pid)
		}
	})
	for _, pid := range dead {
		s.procs.remove(pid)
	}
	s.m.procs.Set(float64(s.procs.len()))
	// Give back the file pages lookups touched: they stay in the page
	// cache and fault back in cheaply, but don't count as our memory
	// between windows.
	s.objects.each(func(_ string, o *object) {
		if o != nil && o.mapped {
			dropPages(o.data, 0, len(o.data))
		}
	})
	if s.kernLoad {
		if mods, err := os.ReadFile(filepath.Join(s.procfs, "modules")); err == nil && !bytes.Equal(mods, s.modules) {
			s.kernLoad = false
			s.kernel = nil
		}
	}
	s.gen++
}

// Close releases cached objects.
func (s *Symbolizer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs.clear()
	s.objects.clear()
	clear(s.byID)
	s.kernel = nil
	return nil
}
