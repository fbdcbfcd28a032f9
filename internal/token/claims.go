package token

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/golang-jwt/jwt/v5"
)

// Kind names what a token may do. It is derived from the scope claims.
type Kind string

// Token kinds (DESIGN.md §4).
const (
	KindProject   Kind = "project"   // project API token: writeProfiles
	KindBootstrap Kind = "bootstrap" // enroll (+ labels, maxUses)
	KindAgent     Kind = "agent"     // per-agent credential: sub, writeProfiles, fleet
	KindAdmin     Kind = "admin"     // admin
)

// Claims is the payload of every fleetprof token. It keeps the shape of the
// hosted product's tokens (aud, iat, iss, jti, projectId, version,
// writeProfiles) and adds our scopes.
type Claims struct {
	Issuer    string           `json:"iss,omitempty"`
	Subject   string           `json:"sub,omitempty"`
	Audience  jwt.ClaimStrings `json:"aud,omitempty"`
	ExpiresAt *jwt.NumericDate `json:"exp,omitempty"`
	NotBefore *jwt.NumericDate `json:"nbf,omitempty"`
	// IssuedAt is in seconds; Verify also accepts milli-, micro- and
	// nanoseconds (older hosted tokens carry nanoseconds) and normalizes.
	IssuedAt *jwt.NumericDate `json:"iat,omitempty"`
	ID       string           `json:"jti,omitempty"`

	ProjectID     string            `json:"projectId,omitempty"`
	Version       string            `json:"version,omitempty"`
	WriteProfiles bool              `json:"writeProfiles,omitempty"`
	Enroll        bool              `json:"enroll,omitempty"`
	Fleet         bool              `json:"fleet,omitempty"`
	Admin         bool              `json:"admin,omitempty"`
	ReadOnly      bool              `json:"readOnly,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	MaxUses       int               `json:"maxUses,omitempty"`

	// KeyID is the kid of the key that verified the token (set by Verify,
	// not part of the payload).
	KeyID string `json:"-"`
}

// UnmarshalJSON decodes claims, reading iat in any of s, ms, µs or ns.
func (c *Claims) UnmarshalJSON(b []byte) error {
	type plain Claims
	var aux struct {
		plain
		IssuedAt  json.Number `json:"iat,omitempty"`
		ExpiresAt *timeClaim  `json:"exp,omitempty"`
		NotBefore *timeClaim  `json:"nbf,omitempty"`
		Audience  audClaim    `json:"aud,omitempty"`
	}
	// A json.Number field takes the number's text, whatever its size.
	// goccy/go-json decodes the claims in a fraction of encoding/json's
	// time (a reconnect storm decodes one credential per agent); exp,
	// nbf and aud are read by timeClaim and audClaim, not by jwt's types,
	// whose decoders run encoding/json (a third of the decode).
	// FuzzClaimsDecode holds it all to encoding/json's reading with jwt's
	// types.
	if err := gojson.Unmarshal(b, &aux); err != nil {
		return fmt.Errorf("decode claims: %w", err)
	}
	*c = Claims(aux.plain)
	c.IssuedAt = nil
	if aux.IssuedAt != "" {
		f, err := aux.IssuedAt.Float64()
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return fmt.Errorf("decode claims: iat %q is not a timestamp", aux.IssuedAt)
		}
		c.IssuedAt = jwt.NewNumericDate(normalizeEpoch(f))
	}
	c.ExpiresAt, c.NotBefore = (*jwt.NumericDate)(aux.ExpiresAt), (*jwt.NumericDate)(aux.NotBefore)
	c.Audience = jwt.ClaimStrings(aux.Audience)
	return nil
}

// timeClaim reads a time claim as jwt.NumericDate does: a number of
// seconds is read here, without encoding/json; anything else by jwt.
type timeClaim jwt.NumericDate

// UnmarshalJSON implements json.Unmarshaler.
func (t *timeClaim) UnmarshalJSON(raw []byte) error {
	if len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')) {
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return fmt.Errorf("could not convert json number value to float: %w", err)
		}
		sec, frac := math.Modf(f)
		*t = timeClaim(*jwt.NewNumericDate(time.Unix(int64(sec), int64(frac*1e9))))
		return nil
	}
	return (*jwt.NumericDate)(t).UnmarshalJSON(raw)
}

// audClaim reads aud as jwt.ClaimStrings does: a string or an array of
// strings is read here, without encoding/json; anything else by jwt.
type audClaim jwt.ClaimStrings

// UnmarshalJSON implements json.Unmarshaler.
func (a *audClaim) UnmarshalJSON(raw []byte) error {
	if len(raw) > 0 {
		switch raw[0] {
		case '"':
			var s string
			if err := gojson.Unmarshal(raw, &s); err == nil {
				*a = audClaim{s}
				return nil
			}
		case '[':
			var ss []string
			if err := gojson.Unmarshal(raw, &ss); err == nil {
				*a = nil
				if len(ss) > 0 {
					*a = ss
				}
				return nil
			}
		}
	}
	return (*jwt.ClaimStrings)(a).UnmarshalJSON(raw)
}

// normalizeEpoch reads an epoch number whose unit is unknown: values past
// year 5138 in seconds are taken as ms, µs or ns by magnitude.
func normalizeEpoch(f float64) time.Time {
	switch {
	case f >= 1e17: // nanoseconds
		return time.Unix(0, int64(f))
	case f >= 1e14: // microseconds
		return time.UnixMicro(int64(f))
	case f >= 1e11: // milliseconds
		return time.UnixMilli(int64(f))
	default:
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9))
	}
}

// Kind reports what the token is for, from its scope claims.
func (c *Claims) Kind() Kind {
	switch {
	case c.Admin:
		return KindAdmin
	case c.Enroll:
		return KindBootstrap
	case c.Fleet && c.Subject != "":
		return KindAgent
	default:
		return KindProject
	}
}

// jwt.Claims implementation.

func (c *Claims) GetExpirationTime() (*jwt.NumericDate, error) { return c.ExpiresAt, nil }
func (c *Claims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.IssuedAt, nil }
func (c *Claims) GetNotBefore() (*jwt.NumericDate, error)      { return c.NotBefore, nil }
func (c *Claims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *Claims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c *Claims) GetAudience() (jwt.ClaimStrings, error)       { return c.Audience, nil }
