package sampler

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// cpuEvent is a CPU-clock perf event on one CPU with the sample program
// attached.
type cpuEvent struct {
	fd   int
	link link.Link // nil when attached with PERF_EVENT_IOC_SET_BPF
}

func openCPUEvent(cpu, hz int, prog *ebpf.Program) (*cpuEvent, error) {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Sample: periodNS(hz),
		Bits:   unix.PerfBitDisabled,
	}
	attr.Size = uint32(unsafe.Sizeof(attr))
	fd, err := unix.PerfEventOpen(&attr, -1, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return nil, perfOpenError(cpu, err)
	}
	ev := &cpuEvent{fd: fd}
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
	if err == nil {
		ev.link = l
	} else {
		// Kernels < 5.15 have no BPF links for perf events.
		if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_SET_BPF, prog.FD()); err != nil {
			unix.Close(fd)
			return nil, attachError(fmt.Sprintf("attach sampler to perf event on cpu %d", cpu), err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_ENABLE, 0); err != nil {
		ev.close()
		return nil, fmt.Errorf("enable perf event on cpu %d: %w", cpu, err)
	}
	return ev, nil
}

func perfOpenError(cpu int, err error) error {
	switch {
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("open cpu-clock perf event on cpu %d: %w: %w; grant CAP_PERFMON (or CAP_SYS_ADMIN), or lower sysctl kernel.perf_event_paranoid (now %s)", cpu, ErrPermission, err, paranoid())
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("open cpu-clock perf event on cpu %d: %w: %w; the kernel needs CONFIG_PERF_EVENTS", cpu, ErrNotSupported, err)
	}
	return fmt.Errorf("open cpu-clock perf event on cpu %d: %w", cpu, err)
}

// periodNS is the cpu-clock sample period for hz. The kernel turns a
// cpu-clock frequency into this fixed period anyway (hrtimer based), so
// the event is opened in period mode and PERF_EVENT_IOC_PERIOD takes
// nanoseconds.
func periodNS(hz int) uint64 { return uint64(1e9 / hz) }

// setFrequency changes the sampling period in place; nothing is reattached
// and the counts of the window in progress stay.
func (e *cpuEvent) setFrequency(hz int) error {
	v := periodNS(hz)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(e.fd), uintptr(unix.PERF_EVENT_IOC_PERIOD), uintptr(unsafe.Pointer(&v)))
	if errno != 0 {
		return errno
	}
	return nil
}

func (e *cpuEvent) close() {
	_ = unix.IoctlSetInt(e.fd, unix.PERF_EVENT_IOC_DISABLE, 0)
	if e.link != nil {
		_ = e.link.Close()
	}
	_ = unix.Close(e.fd)
}
