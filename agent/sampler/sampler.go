package sampler

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Errors New and SetRate may wrap. The message next to them says what is
// missing and how to fix it, so the caller can log it and keep serving.
var (
	// ErrNotSupported means the kernel lacks a feature the sampler needs
	// (eBPF perf_event programs, BTF, the cpu-clock perf event).
	ErrNotSupported = errors.New("not supported by this kernel")
	// ErrPermission means the process lacks a privilege the sampler needs
	// (CAP_BPF, CAP_PERFMON, or a low enough kernel.perf_event_paranoid).
	ErrPermission = errors.New("not permitted")
	// ErrInvalidRate means a frequency or window out of range.
	ErrInvalidRate = errors.New("invalid sampling rate")
	// ErrRunning means Run was called while another Run is active.
	ErrRunning = errors.New("sampler already running")
	// ErrClosed means the sampler was closed.
	ErrClosed = errors.New("sampler closed")
)

// Defaults and limits of Options.
const (
	DefaultFrequencyHz  = 19
	DefaultWindow       = 10 * time.Second
	DefaultCountEntries = 16384
	DefaultStackEntries = 16384
	MaxFrequencyHz      = 1000
	MinWindow           = 100 * time.Millisecond
	MaxStackDepth       = 127
)

// Options configures a Sampler. The zero value gives the defaults.
type Options struct {
	// FrequencyHz is the sampling frequency on every CPU, in Hz;
	// 0 means 19. At most 1000.
	FrequencyHz int
	// Window is how long samples are aggregated before Run hands them
	// over; 0 means 10s. At least 100ms.
	Window time.Duration
	// Logger receives warnings (e.g. RLIMIT_MEMLOCK); nil means zap.NewNop().
	Logger *zap.Logger
	// Registerer receives the sampler's metrics; nil means don't register.
	Registerer prometheus.Registerer
	// CountEntries bounds the distinct {pid, tid, stacks, comm} keys of a
	// window; 0 means 16384. Samples that find the map full are counted as
	// dropped (Window.Dropped and a metric).
	CountEntries int
	// StackEntries bounds the distinct kernel stacks and, separately, the
	// distinct user stacks of a window; 0 means 16384. Each entry costs
	// about 1 KiB of kernel memory, times four (kernel and user maps,
	// double buffered).
	StackEntries int
	// HotplugInterval is how often the online CPUs are re-read to follow
	// CPU hotplug; 0 means 5s.
	HotplugInterval time.Duration
	// OnNewPID, if set, is called when a process is sampled for the first
	// time (or for the first time after exec), so its mappings can be
	// snapshot before it exits. Called from one goroutine of Run, never
	// concurrently; it should return within milliseconds.
	OnNewPID func(pid uint32)
}

// Window is one aggregation period. It and its slices are not reused by
// the sampler, so the receiver may keep them.
type Window struct {
	Start, End time.Time
	// FrequencyHz is the sampling frequency of the whole window (a rate
	// change ends the window in progress early).
	FrequencyHz int
	Samples     []Sample
	// Dropped counts samples lost because the count map was full.
	Dropped uint64
	// LostStacks counts stacks lost (stack map bucket taken or busy, or
	// map full); those samples are in Samples without that stack.
	LostStacks uint64
}

// Sample is the count of one {pid, tid, stacks} key in a window.
type Sample struct {
	PID, TID uint32
	// Comm is the thread's name.
	Comm string
	// User and Kernel are instruction pointers, leaf first. Samples with
	// the same stack share the slice: don't modify it.
	User, Kernel []uint64
	Count        uint64
}

func (o Options) withDefaults() Options {
	if o.FrequencyHz == 0 {
		o.FrequencyHz = DefaultFrequencyHz
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.CountEntries == 0 {
		o.CountEntries = DefaultCountEntries
	}
	if o.StackEntries == 0 {
		o.StackEntries = DefaultStackEntries
	}
	if o.HotplugInterval == 0 {
		o.HotplugInterval = 5 * time.Second
	}
	return o
}

func checkRate(hz int, window time.Duration) error {
	if hz < 1 || hz > MaxFrequencyHz {
		return fmt.Errorf("frequency %d Hz not in [1, %d]: %w", hz, MaxFrequencyHz, ErrInvalidRate)
	}
	if window < MinWindow {
		return fmt.Errorf("window %s shorter than %s: %w", window, MinWindow, ErrInvalidRate)
	}
	return nil
}

// ProgramStats is the kernel's accounting of the sampler's eBPF programs.
// The kernel only counts while kernel.bpf_stats_enabled=1 (or a
// BPF_ENABLE_STATS fd is held).
type ProgramStats struct {
	// Samples is how often the perf_event program ran (one per sample).
	Samples uint64
	// SampleTime is the time spent in the perf_event program.
	SampleTime time.Duration
	// Execs and ExecTime are the same for the exec tracepoint program.
	Execs    uint64
	ExecTime time.Duration
}
