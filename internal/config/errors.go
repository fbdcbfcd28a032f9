package config

import (
	"errors"
	"fmt"
)

// Errors returned by Parse. Both mean the document is the client's fault
// (HTTP 400); the agent reports them as a FAILED remote config.
var (
	// ErrSyntax: not exactly one well-formed YAML document of this schema
	// (syntax error, unknown field, wrong type, bad duration, several
	// documents, too large). The message names the line.
	ErrSyntax = errors.New("invalid config syntax")
	// ErrInvalid: well-formed but a value is out of range or malformed.
	// Every such problem is a *ValidationError; errors.Is(err, ErrInvalid)
	// holds for each of them and for their errors.Join.
	ErrInvalid = errors.New("invalid config")
)

// ValidationError is one invalid value. Path is the field's YAML path, such
// as "sampling.frequency_hz", "targets.systemd.units[1]" or
// "relabel_configs[2].regex".
type ValidationError struct {
	Path   string
	Reason string
}

// Error returns "<path>: <reason>".
func (e *ValidationError) Error() string { return e.Path + ": " + e.Reason }

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func invalid(path, format string, args ...any) *ValidationError {
	return &ValidationError{Path: path, Reason: fmt.Sprintf(format, args...)}
}
