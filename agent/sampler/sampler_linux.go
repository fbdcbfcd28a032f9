package sampler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fleetprof/fleetprof/bpf"
)

// Indexes of the stats map (enum stat in bpf/profile.c).
const (
	statSamples = iota
	statDroppedFull
	statStackCollide
	statStackFull
	statNewPIDLost
	statMax
)

// drainBatch is the number of count-map entries fetched per batch
// syscall; userBatch the same for the user stack maps (1 KiB a value).
const (
	drainBatch = 1024
	userBatch  = 128
)

// Sampler owns the eBPF objects and one perf event per online CPU.
// New, SetRate, Rate and Close may be called from any goroutine.
type Sampler struct {
	log          *zap.Logger
	m            *metrics
	objs         bpf.ProfileObjects
	execLink     link.Link
	rb           *ringbuf.Reader
	onNewPID     func(uint32)
	hotplugEvery time.Duration

	mu      sync.Mutex // guards the fields below
	hz      int
	window  time.Duration
	events  map[int]*cpuEvent
	runDone chan struct{} // non-nil while Run is active
	reqs    chan rateReq
	closed  bool

	// Owned by the goroutine that drains (Run, or New before Run).
	slot      uint32
	lastStats [statMax]uint64
	keys      []bpf.ProfileStackKey
	vals      []bpf.ProfileCountVal
	frames    []uint64
	stackIDs  map[int32][]uint64
	uhashes   []uint64
	ustacks   []bpf.ProfileUserStack
	user      map[uint64][]uint64
}

type rateReq struct {
	hz     int
	window time.Duration
	done   chan error
}

// New loads the eBPF objects and attaches a perf event on every online
// CPU. Errors wrap ErrNotSupported or ErrPermission with the fix in the
// message when the kernel or the privileges don't allow sampling.
func New(opts Options) (*Sampler, error) {
	opts = opts.withDefaults()
	if err := checkRate(opts.FrequencyHz, opts.Window); err != nil {
		return nil, err
	}
	if opts.CountEntries < 1 || opts.StackEntries < 1 {
		return nil, fmt.Errorf("map sizes must be positive (counts %d, stacks %d): %w", opts.CountEntries, opts.StackEntries, ErrInvalidRate)
	}
	s := &Sampler{
		log:          opts.Logger,
		m:            newMetrics(opts.Registerer),
		onNewPID:     opts.OnNewPID,
		hotplugEvery: opts.HotplugInterval,
		hz:           opts.FrequencyHz,
		window:       opts.Window,
		events:       map[int]*cpuEvent{},
		reqs:         make(chan rateReq),
		keys:         make([]bpf.ProfileStackKey, drainBatch),
		vals:         make([]bpf.ProfileCountVal, drainBatch),
		frames:       make([]uint64, MaxStackDepth),
		stackIDs:     map[int32][]uint64{},
		uhashes:      make([]uint64, userBatch),
		ustacks:      make([]bpf.ProfileUserStack, userBatch),
		user:         map[uint64][]uint64{},
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		// Kernels >= 5.11 charge BPF memory to the cgroup, so this is
		// only fatal on older kernels, where loading fails below.
		s.log.Warn("cannot raise RLIMIT_MEMLOCK; fine on kernels >= 5.11", zap.Error(err))
	}
	if err := s.load(opts); err != nil {
		return nil, err
	}
	if err := s.reconcileCPUs(); err != nil {
		s.Close()
		return nil, err
	}
	s.m.hz.Set(float64(s.hz))
	return s, nil
}

func (s *Sampler) load(opts Options) error {
	spec, err := bpf.LoadProfile()
	if err != nil {
		return fmt.Errorf("parse eBPF object: %w", err)
	}
	for _, name := range []string{bpf.ProfileMapCounts0, bpf.ProfileMapCounts1} {
		spec.Maps[name].MaxEntries = uint32(opts.CountEntries)
	}
	for _, name := range []string{bpf.ProfileMapStacks0, bpf.ProfileMapStacks1, bpf.ProfileMapUstacks0, bpf.ProfileMapUstacks1} {
		spec.Maps[name].MaxEntries = uint32(opts.StackEntries)
	}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return loadError(err)
	}
	// CO-RE relocation decoded part of the kernel's BTF (several MiB of
	// heap and touched pages of the mmapped vmlinux BTF); it is garbage
	// now. Give it back to the OS at once instead of carrying it as RSS
	// until the scavenger gets to it.
	debug.FreeOSMemory()
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exec", Program: s.objs.OnExec})
	if err != nil {
		s.objs.Close()
		return attachError("attach raw tracepoint sched_process_exec", err)
	}
	s.execLink = l
	if s.onNewPID != nil {
		rb, err := ringbuf.NewReader(s.objs.NewPids)
		if err != nil {
			s.execLink.Close()
			s.objs.Close()
			return fmt.Errorf("open new-pid ring buffer: %w", err)
		}
		s.rb = rb
	}
	return nil
}

func loadError(err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("load eBPF objects: %w: %w; run as root or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels < 5.8)", ErrPermission, err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("load eBPF objects: %w: %w; needs Linux >= 5.8 with eBPF perf_event programs and ring buffers", ErrNotSupported, err)
	}
	return fmt.Errorf("load eBPF objects: %w", err)
}

func attachError(what string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w: %w; run as root or grant CAP_BPF and CAP_PERFMON", what, ErrPermission, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%s: %w: %w; needs Linux >= 5.8", what, ErrNotSupported, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Rate returns the current frequency and window.
func (s *Sampler) Rate() (hz int, window time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hz, s.window
}

// SetRate changes the frequency and the window length live. A frequency
// change ends the window in progress early (Run hands it over with the
// old frequency), so no sample is lost and each window has one frequency;
// a window change moves the end of the window in progress. While Run
// runs, SetRate waits for Run to apply it, so don't call it from out.
func (s *Sampler) SetRate(hz int, window time.Duration) error {
	if err := checkRate(hz, window); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	done := s.runDone
	if done == nil {
		defer s.mu.Unlock()
		if err := s.setFrequencyLocked(hz); err != nil {
			return err
		}
		s.window = window
		return nil
	}
	s.mu.Unlock()
	req := rateReq{hz: hz, window: window, done: make(chan error, 1)}
	select {
	case s.reqs <- req:
		return <-req.done
	case <-done:
		// Run ended meanwhile: apply directly.
		return s.SetRate(hz, window)
	}
}

// setFrequencyLocked changes the sample frequency of every perf event.
func (s *Sampler) setFrequencyLocked(hz int) error {
	if hz == s.hz {
		return nil
	}
	var errs []error
	for cpu, ev := range s.events {
		if err := ev.setFrequency(hz); err != nil {
			errs = append(errs, fmt.Errorf("set frequency on cpu %d: %w", cpu, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.hz = hz
	s.m.hz.Set(float64(hz))
	return nil
}

// Run drains the maps at the end of every window and calls out with the
// window, from Run's goroutine. It blocks until ctx ends and then returns
// nil; the window in progress at that moment is discarded.
func (s *Sampler) Run(ctx context.Context, out func(*Window)) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.runDone != nil {
		s.mu.Unlock()
		return ErrRunning
	}
	done := make(chan struct{})
	s.runDone = done
	hz, window := s.hz, s.window
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.runDone = nil
		close(done)
		s.mu.Unlock()
	}()

	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if s.rb != nil {
		wg.Go(func() { s.readNewPIDs(rctx) })
	}

	// Discard what was counted before Run started.
	if _, err := s.flush(time.Time{}, time.Time{}, 0); err != nil {
		return err
	}
	start := time.Now()
	end := start.Add(window)
	timer := time.NewTimer(window)
	defer timer.Stop()
	hot := time.NewTicker(s.hotplugEvery)
	defer hot.Stop()

	emit := func(now time.Time) error {
		w, err := s.flush(start, now, hz)
		if err != nil {
			return err
		}
		start = now
		end = now.Add(window)
		timer.Reset(window)
		out(w)
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			if err := emit(time.Now()); err != nil {
				return err
			}
		case <-hot.C:
			if err := s.reconcileCPUs(); err != nil {
				s.log.Warn("follow cpu hotplug", zap.Error(err))
			}
		case req := <-s.reqs:
			var err error
			if req.hz != hz {
				// Hand over the window in progress at the old rate,
				// then change the rate for the next one.
				now := time.Now()
				w, ferr := s.flush(start, now, hz)
				if ferr != nil {
					req.done <- ferr
					return ferr
				}
				s.mu.Lock()
				err = s.setFrequencyLocked(req.hz)
				hz = s.hz
				s.mu.Unlock()
				start = now
				end = now
				out(w)
			}
			s.mu.Lock()
			s.window = req.window
			s.mu.Unlock()
			window = req.window
			end = start.Add(window)
			timer.Reset(max(time.Until(end), 0))
			req.done <- err
		}
	}
}

// readNewPIDs forwards new-process notifications to OnNewPID until ctx ends.
// It sleeps in the kernel until a record arrives (no polling timer): when
// ctx ends, a flush of the ring buffer wakes it up.
func (s *Sampler) readNewPIDs(ctx context.Context) {
	var rec ringbuf.Record
	s.rb.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = s.rb.Flush() })
	defer stop()
	for {
		if err := s.rb.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrFlushed) || errors.Is(err, os.ErrDeadlineExceeded) {
				if ctx.Err() != nil {
					return
				}
				continue // a flush left over from an earlier Run
			}
			if !errors.Is(err, ringbuf.ErrClosed) {
				s.log.Warn("read new-pid ring buffer", zap.Error(err))
			}
			return
		}
		if len(rec.RawSample) >= 4 {
			s.onNewPID(*(*uint32)(unsafe.Pointer(&rec.RawSample[0])))
		}
	}
}

// flush makes the other slot active, drains the previous one and returns
// its samples as a window from start to end at hz.
func (s *Sampler) flush(start, end time.Time, hz int) (*Window, error) {
	t0 := time.Now()
	old := s.slot
	s.slot ^= 1
	if err := s.objs.ActiveSlot.Put(uint32(0), s.slot); err != nil {
		return nil, fmt.Errorf("switch active slot: %w", err)
	}
	// Programs that read the old slot just before the switch finish
	// within microseconds; let them.
	time.Sleep(time.Millisecond)
	counts, stacks, ustacks := s.objs.Counts0, s.objs.Stacks0, s.objs.Ustacks0
	if old == 1 {
		counts, stacks, ustacks = s.objs.Counts1, s.objs.Stacks1, s.objs.Ustacks1
	}

	w := &Window{Start: start, End: end, FrequencyHz: hz}
	clear(s.stackIDs)
	clear(s.user)
	if err := s.drainUserStacks(ustacks); err != nil {
		return nil, err
	}
	err := s.drainCounts(counts, func(k *bpf.ProfileStackKey, v *bpf.ProfileCountVal) {
		w.Samples = append(w.Samples, Sample{
			PID:    k.Pid,
			TID:    k.Tid,
			Comm:   comm(v.Comm),
			User:   s.user[k.UserStack],
			Kernel: s.stack(stacks, k.KernelStackId),
			Count:  v.Count,
		})
	})
	if err != nil {
		return nil, err
	}
	for id := range s.stackIDs {
		if err := stacks.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("delete stack %d: %w", id, err)
		}
	}

	delta, err := s.readStats()
	if err != nil {
		return nil, err
	}
	w.Dropped = delta[statDroppedFull]
	w.LostStacks = delta[statStackCollide] + delta[statStackFull]
	if w.Dropped > 0 {
		// Stacks of dropped samples are not referenced by any count:
		// sweep them so the idle slot starts empty.
		if err := sweep(stacks); err != nil {
			return nil, err
		}
	}
	var total uint64
	for _, smp := range w.Samples {
		total += smp.Count
	}
	s.m.samples.Add(float64(total + w.Dropped))
	s.m.dropped.Add(float64(delta[statDroppedFull]))
	s.m.lostStacks.WithLabelValues("collision").Add(float64(delta[statStackCollide]))
	s.m.lostStacks.WithLabelValues("full").Add(float64(delta[statStackFull]))
	s.m.lostPIDs.Add(float64(delta[statNewPIDLost]))
	if w.Dropped > 0 {
		s.log.Warn("count map full: samples dropped; raise CountEntries", zap.Uint64("dropped", w.Dropped))
	}
	if !start.IsZero() {
		s.m.windows.Inc()
	}
	s.m.drain.Set(time.Since(t0).Seconds())
	return w, nil
}

// drainCounts removes every entry of counts in batches and calls fn for
// each. Buffers are reused across windows.
func (s *Sampler) drainCounts(counts *ebpf.Map, fn func(*bpf.ProfileStackKey, *bpf.ProfileCountVal)) error {
	var cursor ebpf.MapBatchCursor
	for {
		n, err := counts.BatchLookupAndDelete(&cursor, s.keys, s.vals, nil)
		for i := range n {
			fn(&s.keys[i], &s.vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil // done, possibly with a partial last batch
		case errors.Is(err, ebpf.ErrNotSupported):
			return s.drainOneByOne(counts, fn)
		case errors.Is(err, unix.ENOSPC):
			// A bucket larger than the batch: grow and retry.
			s.keys = make([]bpf.ProfileStackKey, 2*len(s.keys))
			s.vals = make([]bpf.ProfileCountVal, 2*len(s.vals))
		case err != nil:
			return fmt.Errorf("drain counts: %w", err)
		}
	}
}

// drainUserStacks empties the user stack map of the idle slot into s.user
// (hash to frames, leaf first), in batches.
func (s *Sampler) drainUserStacks(ustacks *ebpf.Map) error {
	var cursor ebpf.MapBatchCursor
	for {
		n, err := ustacks.BatchLookupAndDelete(&cursor, s.uhashes, s.ustacks, nil)
		for i := range n {
			st := &s.ustacks[i]
			s.user[s.uhashes[i]] = slices.Clone(st.Ips[:min(st.Len, MaxStackDepth)])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return s.drainUserOneByOne(ustacks)
		case errors.Is(err, unix.ENOSPC):
			s.uhashes = make([]uint64, 2*len(s.uhashes))
			s.ustacks = make([]bpf.ProfileUserStack, 2*len(s.ustacks))
		case err != nil:
			return fmt.Errorf("drain user stacks: %w", err)
		}
	}
}

// drainUserOneByOne is the fallback for kernels without batch operations.
// Nothing writes to the idle slot, so deleting as it goes is safe.
func (s *Sampler) drainUserOneByOne(ustacks *ebpf.Map) error {
	var h uint64
	st := &s.ustacks[0]
	for {
		if err := ustacks.NextKey(nil, &h); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil
			}
			return fmt.Errorf("drain user stacks: %w", err)
		}
		if err := ustacks.Lookup(&h, st); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("drain user stacks: %w", err)
		} else if err == nil {
			s.user[h] = slices.Clone(st.Ips[:min(st.Len, MaxStackDepth)])
		}
		if err := ustacks.Delete(&h); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("drain user stacks: %w", err)
		}
	}
}

// drainOneByOne is the fallback for kernels without batch operations.
func (s *Sampler) drainOneByOne(counts *ebpf.Map, fn func(*bpf.ProfileStackKey, *bpf.ProfileCountVal)) error {
	var k bpf.ProfileStackKey
	var v bpf.ProfileCountVal
	for {
		if err := counts.NextKey(nil, &k); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil
			}
			return fmt.Errorf("drain counts: %w", err)
		}
		if err := counts.LookupAndDelete(&k, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err := counts.Lookup(&k, &v); err != nil {
				return fmt.Errorf("drain counts: %w", err)
			}
			if err := counts.Delete(&k); err != nil {
				return fmt.Errorf("drain counts: %w", err)
			}
		}
		kk, vv := k, v
		fn(&kk, &vv)
	}
}

// stack returns the frames of stack id (nil for a negative id or a stack
// that is gone), reading each id once per window.
func (s *Sampler) stack(stacks *ebpf.Map, id int32) []uint64 {
	if id < 0 {
		return nil
	}
	if f, ok := s.stackIDs[id]; ok {
		return f
	}
	var f []uint64
	if err := stacks.Lookup(id, s.frames); err == nil {
		n := 0
		for n < len(s.frames) && s.frames[n] != 0 {
			n++
		}
		f = slices.Clone(s.frames[:n])
	}
	s.stackIDs[id] = f
	return f
}

func sweep(stacks *ebpf.Map) error {
	var id uint32
	for {
		if err := stacks.NextKey(nil, &id); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil
			}
			return fmt.Errorf("sweep stacks: %w", err)
		}
		if err := stacks.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("sweep stacks: %w", err)
		}
	}
}

// readStats sums the per-CPU counters and returns what changed since the
// last call.
func (s *Sampler) readStats() ([statMax]uint64, error) {
	var delta [statMax]uint64
	var perCPU []uint64
	for i := range statMax {
		if err := s.objs.Stats.Lookup(uint32(i), &perCPU); err != nil {
			return delta, fmt.Errorf("read stats: %w", err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		delta[i] = sum - s.lastStats[i]
		s.lastStats[i] = sum
	}
	return delta, nil
}

func comm(c [16]int8) string {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&c[0])), len(c))
	if i := slices.Index(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// reconcileCPUs opens a perf event on each online CPU that has none and
// closes those of CPUs that went offline.
func (s *Sampler) reconcileCPUs() error {
	data, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return fmt.Errorf("read online cpus: %w", err)
	}
	online, err := parseCPUList(string(data))
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.reconcileLocked(online)
}

func (s *Sampler) reconcileLocked(online []int) error {
	var errs []error
	for cpu, ev := range s.events {
		if !slices.Contains(online, cpu) {
			ev.close()
			delete(s.events, cpu)
			s.log.Info("cpu went offline", zap.Int("cpu", cpu))
		}
	}
	opened := 0
	for _, cpu := range online {
		if _, ok := s.events[cpu]; ok {
			continue
		}
		ev, err := openCPUEvent(cpu, s.hz, s.objs.Sample)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.events[cpu] = ev
		opened++
	}
	s.m.cpus.Set(float64(len(s.events)))
	if len(s.events) == 0 {
		return errors.Join(append(errs, fmt.Errorf("no cpu could be sampled (online: %v)", online))...)
	}
	if len(errs) > 0 {
		// Some CPUs (e.g. one going offline right now) failed: the
		// others sample; report and retry at the next reconcile.
		s.log.Warn("open perf events", zap.Error(errors.Join(errs...)))
	}
	return nil
}

// Close detaches and frees everything. It is safe to call more than once;
// a running Run must have returned first or returns soon after.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for cpu, ev := range s.events {
		ev.close()
		delete(s.events, cpu)
	}
	if s.rb != nil {
		errs = append(errs, s.rb.Close())
	}
	if s.execLink != nil {
		errs = append(errs, s.execLink.Close())
	}
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}

// paranoid returns kernel.perf_event_paranoid for error messages.
func paranoid() string {
	b, err := os.ReadFile("/proc/sys/kernel/perf_event_paranoid")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// ProgramStats returns the run counts and run times of the sampler's eBPF
// programs since they were loaded.
func (s *Sampler) ProgramStats() (ProgramStats, error) {
	var st ProgramStats
	ps, err := s.objs.Sample.Stats()
	if err != nil {
		return st, fmt.Errorf("stats of sample program: %w", err)
	}
	st.Samples, st.SampleTime = ps.RunCount, ps.Runtime
	pe, err := s.objs.OnExec.Stats()
	if err != nil {
		return st, fmt.Errorf("stats of exec program: %w", err)
	}
	st.Execs, st.ExecTime = pe.RunCount, pe.Runtime
	return st, nil
}
