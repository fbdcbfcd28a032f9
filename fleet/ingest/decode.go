package ingest

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"

	"connectrpc.com/connect"
	"github.com/google/pprof/profile"

	"github.com/fleetprof/fleetprof/fleet/profiles"
)

// Errors of the ingest path; each maps to one status (see Error).
var (
	// ErrInvalid: corrupt gzip or pprof, bad labels, bad parameters (400, InvalidArgument).
	ErrInvalid = errors.New("invalid upload")
	// ErrTooLarge: a size or count limit was exceeded (413, ResourceExhausted).
	ErrTooLarge = errors.New("upload too large")
	// ErrUnauthenticated: missing, invalid, expired or revoked token (401).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: valid token without writeProfiles, or a claim on
	// another project (403).
	ErrPermissionDenied = errors.New("permission denied")
)

// Limits bound what one request may carry. Zero fields take the defaults
// in parentheses.
type Limits struct {
	// MaxRequestBytes is the size of a request body as sent (16 MiB).
	MaxRequestBytes int64
	// MaxProfileBytes is the size of one decompressed pprof profile (16 MiB).
	MaxProfileBytes int64
	// MaxProfiles is the number of profiles in one request (1000).
	MaxProfiles int
	// MaxLabels is the number of labels of one series (64).
	MaxLabels int
	// MaxLabelNameLength in bytes (128).
	MaxLabelNameLength int
	// MaxLabelValueLength in bytes (1024).
	MaxLabelValueLength int
	// MaxSamples is the number of samples in one profile (1,000,000).
	MaxSamples int
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if l.MaxRequestBytes <= 0 {
		l.MaxRequestBytes = 16 << 20
	}
	if l.MaxProfileBytes <= 0 {
		l.MaxProfileBytes = 16 << 20
	}
	def(&l.MaxProfiles, 1000)
	def(&l.MaxLabels, 64)
	def(&l.MaxLabelNameLength, 128)
	def(&l.MaxLabelValueLength, 1024)
	def(&l.MaxSamples, 1_000_000)
	return l
}

// Decode checks one raw profile (gzipped or not) against the limits and
// parses it. It returns the parsed profile and its gzipped bytes (raw
// itself when it was gzipped). Errors wrap ErrInvalid or ErrTooLarge; the
// decompressed size is capped while reading, so a gzip bomb costs at most
// MaxProfileBytes of memory.
func Decode(raw []byte, lim Limits) (p *profile.Profile, gz []byte, err error) {
	lim = lim.withDefaults()
	if len(raw) == 0 {
		return nil, nil, fmt.Errorf("empty profile: %w", ErrInvalid)
	}
	data := raw
	gzipped := len(raw) >= 2 && raw[0] == 0x1f && raw[1] == 0x8b
	if gzipped {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, nil, fmt.Errorf("corrupt gzip: %w: %w", ErrInvalid, err)
		}
		// The trailer states the (last member's) size: refuse an honest
		// bomb at once, and size the buffer for an honest profile.
		hint := int64(binary.LittleEndian.Uint32(raw[len(raw)-4:]))
		if len(raw) >= 18 && hint > lim.MaxProfileBytes {
			return nil, nil, fmt.Errorf("decompressed profile exceeds %d bytes (gzip trailer says %d): %w", lim.MaxProfileBytes, hint, ErrTooLarge)
		}
		buf := bytes.NewBuffer(make([]byte, 0, min(hint, lim.MaxProfileBytes)+bytes.MinRead))
		n, err := buf.ReadFrom(io.LimitReader(zr, lim.MaxProfileBytes+1))
		if err != nil {
			return nil, nil, fmt.Errorf("corrupt gzip: %w: %w", ErrInvalid, err)
		}
		if n > lim.MaxProfileBytes {
			return nil, nil, fmt.Errorf("decompressed profile exceeds %d bytes: %w", lim.MaxProfileBytes, ErrTooLarge)
		}
		data = buf.Bytes()
	} else if int64(len(raw)) > lim.MaxProfileBytes {
		return nil, nil, fmt.Errorf("profile exceeds %d bytes: %w", lim.MaxProfileBytes, ErrTooLarge)
	}
	p, err = parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("corrupt pprof: %w: %w", ErrInvalid, err)
	}
	if len(p.Sample) > lim.MaxSamples {
		return nil, nil, fmt.Errorf("profile has %d samples, more than %d: %w", len(p.Sample), lim.MaxSamples, ErrTooLarge)
	}
	if len(p.SampleType) == 0 {
		return nil, nil, fmt.Errorf("corrupt pprof: no sample types: %w", ErrInvalid)
	}
	if err := p.CheckValid(); err != nil {
		return nil, nil, fmt.Errorf("corrupt pprof: %w: %w", ErrInvalid, err)
	}
	if gzipped {
		return p, raw, nil
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		return nil, nil, fmt.Errorf("gzip profile: %w", err)
	}
	return p, buf.Bytes(), nil
}

// parse is profile.ParseUncompressed with a guard: a panic of the parser
// on hostile input becomes an error.
func parse(data []byte) (p *profile.Profile, err error) {
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("pprof parser: %v", r)
		}
	}()
	return profile.ParseUncompressed(data)
}

// RetryAfter is the Retry-After (seconds) of a 503 answered when the
// profile storage is unavailable.
const RetryAfter = "5"

// Status maps an ingest error to its HTTP status, envelope code and
// connect code. An unavailable profile storage (profiles.ErrUnavailable:
// nothing was stored) is 503 Unavailable, to be retried after RetryAfter.
func Status(err error) (int, string, connect.Code) {
	switch {
	case errors.Is(err, profiles.ErrUnavailable):
		return http.StatusServiceUnavailable, "unavailable", connect.CodeUnavailable
	case errors.Is(err, ErrUnauthenticated):
		return http.StatusUnauthorized, "unauthenticated", connect.CodeUnauthenticated
	case errors.Is(err, ErrPermissionDenied):
		return http.StatusForbidden, "permission_denied", connect.CodePermissionDenied
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge, "resource_exhausted", connect.CodeResourceExhausted
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest, "invalid_argument", connect.CodeInvalidArgument
	}
	return http.StatusInternalServerError, "internal", connect.CodeInternal
}
