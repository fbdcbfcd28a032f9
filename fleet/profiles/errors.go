package profiles

import "errors"

// Errors returned by the store and the query API.
var (
	// ErrInvalid: a malformed query, selector, time range or profile.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: no profiles match the query.
	ErrNotFound = errors.New("not found")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("profile store closed")
	// ErrUnavailable: the blob backend (an object store) cannot be reached
	// or failed; nothing was stored, and the write may be retried later.
	ErrUnavailable = errors.New("profile storage unavailable")
)
