package token

import "errors"

// Errors returned by Verify and the scope checks. Every one of them means
// the request is not authenticated (HTTP 401) except ErrScope, which means
// the token is valid but may not do this (HTTP 403).
var (
	// ErrMalformed: not a JWT, bad encoding, oversized, or missing claims.
	ErrMalformed = errors.New("malformed token")
	// ErrAlgorithm: an alg other than EdDSA (including "none" and HS256).
	ErrAlgorithm = errors.New("unsupported token algorithm")
	// ErrUnknownKey: the kid names no key this fleet knows (or it was retired).
	ErrUnknownKey = errors.New("unknown signing key")
	// ErrSignature: the signature does not verify.
	ErrSignature = errors.New("bad token signature")
	// ErrExpired: exp is in the past (or nbf/iat in the future).
	ErrExpired = errors.New("token expired")
	// ErrRevoked: the token's jti was revoked (deleted).
	ErrRevoked = errors.New("token revoked")
	// ErrUnknownProject: the project claim names no existing project.
	ErrUnknownProject = errors.New("unknown project")
	// ErrScope: the token is valid but lacks the scope for this action.
	ErrScope = errors.New("token lacks the required scope")
)
