package token

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"
	"unsafe"

	gojson "github.com/goccy/go-json"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
)

// MaxLength bounds the size of a token accepted by Verify (bytes). Larger
// input is rejected as ErrMalformed before any decoding.
const MaxLength = 8 << 10

// Leeway is the clock skew tolerated on exp, nbf and iat.
const Leeway = 5 * time.Second

// ClaimsVersion is written into the version claim of tokens we issue.
const ClaimsVersion = "1.0.0"

// IssueOptions describes a token to issue.
type IssueOptions struct {
	Kind      Kind
	Issuer    string        // fleet URL
	ProjectID string        // required for every kind but admin
	Subject   string        // agent id, for KindAgent
	TTL       time.Duration // 0 means no exp
	Labels    map[string]string
	MaxUses   int  // bootstrap tokens; 0 means unlimited
	ReadOnly  bool // admin tokens that may only read
	Now       time.Time
}

// Issue signs a new token with the active key and returns it with its
// claims (the caller stores the claims' jti and metadata, never the token).
func (ks *KeySet) Issue(o IssueOptions) (string, *Claims, error) {
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	c := &Claims{
		Issuer:    o.Issuer,
		Subject:   o.Subject,
		IssuedAt:  jwt.NewNumericDate(now),
		ID:        uuid.NewString(),
		ProjectID: o.ProjectID,
		Version:   ClaimsVersion,
		Labels:    o.Labels,
	}
	if o.ProjectID != "" {
		c.Audience = jwt.ClaimStrings{o.ProjectID}
	}
	if o.TTL > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(o.TTL))
	}
	switch o.Kind {
	case KindProject:
		c.WriteProfiles = true
	case KindBootstrap:
		c.Enroll = true
		c.MaxUses = o.MaxUses
	case KindAgent:
		if o.Subject == "" {
			return "", nil, fmt.Errorf("issue agent token: subject (agent id) is required")
		}
		c.WriteProfiles, c.Fleet = true, true
	case KindAdmin:
		c.Admin = true
		c.ReadOnly = o.ReadOnly
	default:
		return "", nil, fmt.Errorf("issue token: unknown kind %q", o.Kind)
	}
	if o.Kind != KindAdmin && o.ProjectID == "" {
		return "", nil, fmt.Errorf("issue %s token: project id is required", o.Kind)
	}
	k := ks.signer()
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	t.Header["kid"] = k.ID
	s, err := t.SignedString(k.private)
	if err != nil {
		return "", nil, fmt.Errorf("sign token: %w", err)
	}
	return s, c, nil
}

// Verify checks a token's encoding, algorithm, key, signature and time
// claims, and returns its claims. It does not check revocation, project
// existence or scope; fleet/auth does, with the store. Errors wrap the
// package sentinels (ErrMalformed, ErrAlgorithm, ErrUnknownKey,
// ErrSignature, ErrExpired).
func (ks *KeySet) Verify(raw string, now time.Time) (*Claims, error) {
	if len(raw) > MaxLength {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(raw), MaxLength)
	}
	if now.IsZero() {
		now = time.Now()
	}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{"EdDSA"}),
		jwt.WithLeeway(Leeway),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithIssuedAt(),
	)
	// Check the algorithm first so "none" and HS256 are named as such.
	// This parse reads the header; the payload is only checked for JSON
	// syntax here and decoded once, below (a reconnect storm verifies one
	// token per agent).
	unverified, _, err := p.ParseUnverified(raw, &syntaxOnly{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if alg, _ := unverified.Header["alg"].(string); alg != "EdDSA" {
		return nil, fmt.Errorf("%w: alg %q, want EdDSA", ErrAlgorithm, alg)
	}
	claims := &Claims{}
	keyID := ""
	_, err = p.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		kidv, present := t.Header["kid"]
		if !present {
			// Tokens of the hosted shape carry no kid: try every live key.
			vs := ks.verifiers()
			keys := make([]jwt.VerificationKey, len(vs))
			for i, v := range vs {
				keys[i] = v
			}
			return jwt.VerificationKeySet{Keys: keys}, nil
		}
		kid, ok := kidv.(string)
		if !ok {
			return nil, fmt.Errorf("%w: kid is not a string", ErrMalformed)
		}
		k, ok := ks.verifier(kid)
		if !ok {
			return nil, fmt.Errorf("%w: kid %q", ErrUnknownKey, kid)
		}
		keyID = kid
		return ed25519.PublicKey(k.Public()), nil
	})
	switch {
	case err == nil:
	case errors.Is(err, ErrUnknownKey), errors.Is(err, ErrMalformed):
		return nil, err
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return nil, fmt.Errorf("%w: %w", ErrExpired, err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return nil, fmt.Errorf("%w: %w", ErrSignature, err)
	default:
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return complete(claims, keyID)
}

// complete checks the claims every verified token must carry.
func complete(claims *Claims, keyID string) (*Claims, error) {
	if claims.ID == "" {
		return nil, fmt.Errorf("%w: missing jti", ErrMalformed)
	}
	claims.KeyID = keyID
	if !claims.Admin && claims.ProjectID == "" {
		return nil, fmt.Errorf("%w: missing projectId", ErrMalformed)
	}
	return claims, nil
}

// Sum is the SHA-256 of a token, which the fleet records for the agent
// credentials it accepted (never the token itself).
func Sum(raw string) [32]byte {
	// The bytes of raw, not a copy (Sum256 only reads them): a reconnect
	// storm hashes one token per agent.
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
}

// VerifyRecorded is Verify for a token the caller may have recorded by
// its Sum when it accepted it before: recorded gets the token's claims,
// unverified, and returns the recorded sum, if any. When raw hashes to
// it, the signature is not checked again (this process's or a replica's
// earlier verification stands; the sum is a commitment to the exact
// bytes it verified), and everything else Verify checks still is: the
// encoding, the algorithm, a kid naming a key that is not retired, the
// time claims, jti and projectId. Otherwise, or for a token without kid,
// it is Verify. A reconnect storm after a fleet restart then costs a
// hash per agent instead of an Ed25519 verification (~70 µs here).
func (ks *KeySet) VerifyRecorded(raw string, now time.Time, recorded func(*Claims) ([32]byte, bool)) (*Claims, error) {
	if len(raw) > MaxLength {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(raw), MaxLength)
	}
	if now.IsZero() {
		now = time.Now()
	}
	claims, header, ok := decodeUnverified(raw)
	if !ok {
		return ks.Verify(raw, now) // which says what is wrong
	}
	kid, _ := header["kid"].(string)
	if alg, _ := header["alg"].(string); alg != "EdDSA" || kid == "" {
		return ks.Verify(raw, now)
	}
	sum, ok := recorded(claims)
	if !ok || sum != Sum(raw) {
		return ks.Verify(raw, now)
	}
	if _, ok := ks.verifier(kid); !ok {
		return nil, fmt.Errorf("%w: kid %q", ErrUnknownKey, kid)
	}
	v := jwt.NewValidator(jwt.WithLeeway(Leeway), jwt.WithTimeFunc(func() time.Time { return now }), jwt.WithIssuedAt())
	if err := v.Validate(claims); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrExpired, err)
	}
	return complete(claims, kid)
}

// decodeUnverified reads a compact JWS's header and claims, checking
// nothing: what VerifyRecorded compares with a record. The segments are
// decoded as jwt's parser does (Parser.DecodeSegment) and the claims by
// Claims.UnmarshalJSON, as Verify reads them, but with goccy/go-json
// alone: jwt.Parser.ParseUnverified decoded the header into a map with
// encoding/json and ran the payload through encoding/json's scanner
// before it reached UnmarshalJSON, half the cost of a recorded check in
// a reconnect storm, and deep enough to grow every handshake's stack.
// A token accepted on its record hashes to one that Verify accepted in
// full, so reading it more leniently than jwt accepts nothing more; on
// anything unusual the caller verifies in full, which names the fault.
func decodeUnverified(raw string) (*Claims, map[string]any, bool) {
	h, rest, ok := strings.Cut(raw, ".")
	if !ok {
		return nil, nil, false
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(sig, ".") {
		return nil, nil, false
	}
	p := jwt.NewParser()
	hb, err := p.DecodeSegment(h)
	if err != nil {
		return nil, nil, false
	}
	var header map[string]any
	if err := gojson.Unmarshal(hb, &header); err != nil || header == nil {
		return nil, nil, false
	}
	pb, err := p.DecodeSegment(payload)
	if err != nil {
		return nil, nil, false
	}
	c := &Claims{}
	if err := c.UnmarshalJSON(pb); err != nil {
		return nil, nil, false
	}
	return c, header, true
}

// syntaxOnly is the claims of Verify's first, unverified parse: the
// JSON decoder checks the payload's syntax, and nothing is decoded.
type syntaxOnly struct{ jwt.RegisteredClaims }

// UnmarshalJSON implements json.Unmarshaler by decoding nothing.
func (*syntaxOnly) UnmarshalJSON([]byte) error { return nil }

// ParseUnverified decodes a token's claims without checking anything. Use
// it only to read a token one already trusts (e.g. its own credential's
// expiry); never to authorize.
func ParseUnverified(raw string) (*Claims, error) {
	if len(raw) > MaxLength {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(raw), MaxLength)
	}
	c := &Claims{}
	if _, _, err := jwt.NewParser().ParseUnverified(raw, c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return c, nil
}
