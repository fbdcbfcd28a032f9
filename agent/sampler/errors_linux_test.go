package sampler

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		sentinel error
		hint     string
	}{
		{"perf eacces", perfOpenError(3, unix.EACCES), ErrPermission, "perf_event_paranoid"},
		{"perf eperm", perfOpenError(0, unix.EPERM), ErrPermission, "CAP_PERFMON"},
		{"perf enoent", perfOpenError(0, unix.ENOENT), ErrNotSupported, "CONFIG_PERF_EVENTS"},
		{"load eperm", loadError(fmt.Errorf("map create: %w", unix.EPERM)), ErrPermission, "CAP_BPF"},
		{"load unsupported", loadError(fmt.Errorf("ringbuf: %w", ebpf.ErrNotSupported)), ErrNotSupported, "Linux >= 5.8"},
		{"attach eperm", attachError("attach", unix.EPERM), ErrPermission, "CAP_BPF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, tc.sentinel) {
				t.Errorf("%v does not wrap %v", tc.err, tc.sentinel)
			}
			if !strings.Contains(tc.err.Error(), tc.hint) {
				t.Errorf("%q lacks the hint %q", tc.err, tc.hint)
			}
		})
	}
	if err := perfOpenError(0, unix.EBUSY); errors.Is(err, ErrPermission) || errors.Is(err, ErrNotSupported) {
		t.Errorf("EBUSY mapped to a sentinel: %v", err)
	}
}

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		ok   bool
	}{
		{"0-1\n", []int{0, 1}, true},
		{"0,2-4,7", []int{0, 2, 3, 4, 7}, true},
		{"", nil, true},
		{"3-1", nil, false},
		{"a", nil, false},
		{"-1", nil, false},
	} {
		got, err := parseCPUList(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("parseCPUList(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("parseCPUList(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
