//go:build !linux

package sampler

import (
	"context"
	"fmt"
	"time"
)

// Sampler is only implemented on Linux.
type Sampler struct{}

// New returns an error wrapping ErrNotSupported on this platform.
func New(opts Options) (*Sampler, error) {
	return nil, fmt.Errorf("eBPF sampling needs Linux: %w", ErrNotSupported)
}

// Run returns an error wrapping ErrNotSupported.
func (s *Sampler) Run(ctx context.Context, out func(*Window)) error {
	return fmt.Errorf("eBPF sampling needs Linux: %w", ErrNotSupported)
}

// SetRate returns an error wrapping ErrNotSupported.
func (s *Sampler) SetRate(hz int, window time.Duration) error {
	return fmt.Errorf("eBPF sampling needs Linux: %w", ErrNotSupported)
}

// Rate returns zeros.
func (s *Sampler) Rate() (hz int, window time.Duration) { return 0, 0 }

// Close does nothing.
func (s *Sampler) Close() error { return nil }

// ProgramStats returns an error wrapping ErrNotSupported.
func (s *Sampler) ProgramStats() (ProgramStats, error) {
	return ProgramStats{}, fmt.Errorf("eBPF sampling needs Linux: %w", ErrNotSupported)
}
