package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
)

func newKeySet(tb testing.TB) *KeySet {
	tb.Helper()
	ks, err := OpenKeySet(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return ks
}

// agentCredential returns a key set and an agent credential it issued
// (an hour's life).
func agentCredential(tb testing.TB) (*KeySet, string) {
	tb.Helper()
	ks := newKeySet(tb)
	raw, _, err := ks.Issue(IssueOptions{Kind: KindAgent, ProjectID: "p1", Subject: "0123456789abcdef0123456789abcdef", TTL: time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	return ks, raw
}

func issue(t *testing.T, ks *KeySet, o IssueOptions) string {
	t.Helper()
	if o.ProjectID == "" && o.Kind != KindAdmin {
		o.ProjectID = "p1"
	}
	s, _, err := ks.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestIssueVerifyRoundTrip(t *testing.T) {
	ks := newKeySet(t)
	for _, kind := range []Kind{KindProject, KindBootstrap, KindAgent, KindAdmin} {
		t.Run(string(kind), func(t *testing.T) {
			raw := issue(t, ks, IssueOptions{Kind: kind, Subject: "agent-1", TTL: time.Hour, Labels: map[string]string{"cluster": "a"}})
			c, err := ks.Verify(raw, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if c.Kind() != kind {
				t.Errorf("kind = %s, want %s", c.Kind(), kind)
			}
			if c.ID == "" || c.Version != ClaimsVersion {
				t.Errorf("claims = %+v", c)
			}
		})
	}
}

// The hosted product's documented token: header {"alg":"EdDSA"} (no kid),
// iat in nanoseconds. Signed by our key it must verify.
func TestHostedShapeNanosecondIat(t *testing.T) {
	ks := newKeySet(t)
	k := ks.signer()
	iat := time.Now().Add(-time.Hour)
	header := b64(map[string]any{"alg": "EdDSA"})
	payload := b64(map[string]any{
		"aud": "4f1b0f4e-1111-2222-3333-444455556666", "iat": iat.UnixNano(), "iss": "https://fleet.example",
		"jti": "0e6b3c49-7d2c-4d6a-8c7e-6c1f2d3e4f50", "projectId": "4f1b0f4e-1111-2222-3333-444455556666",
		"version": "1.0.0", "writeProfiles": true,
	})
	sig := ed25519.Sign(k.private, []byte(header+"."+payload))
	raw := header + "." + payload + "." + base64.RawURLEncoding.EncodeToString(sig)
	c, err := ks.Verify(raw, time.Time{})
	if err != nil {
		t.Fatalf("hosted shape rejected: %v", err)
	}
	if !c.WriteProfiles || c.Kind() != KindProject {
		t.Errorf("claims = %+v", c)
	}
	if d := c.IssuedAt.Time.Sub(iat); d > time.Second || d < -time.Second {
		t.Errorf("iat normalized to %v, want %v", c.IssuedAt.Time, iat)
	}
	// And in seconds.
	payload = b64(map[string]any{"iat": iat.Unix(), "jti": "x", "projectId": "p", "writeProfiles": true})
	sig = ed25519.Sign(k.private, []byte(header+"."+payload))
	if _, err := ks.Verify(header+"."+payload+"."+base64.RawURLEncoding.EncodeToString(sig), time.Time{}); err != nil {
		t.Fatalf("iat in seconds rejected: %v", err)
	}
}

// The bad-token matrix: each case is rejected with its own sentinel.
func TestBadTokens(t *testing.T) {
	ks := newKeySet(t)
	good := issue(t, ks, IssueOptions{Kind: KindProject})
	parts := strings.Split(good, ".")
	other := newKeySet(t)
	pub := ks.signer().Public()

	hs256 := func() string {
		tk := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"jti": "j", "projectId": "p1", "writeProfiles": true})
		tk.Header["kid"] = ks.ActiveID()
		s, err := tk.SignedString([]byte(pub))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	tampered := func() string {
		var m map[string]any
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(b, &m)
		m["projectId"] = "someone-else"
		return parts[0] + "." + b64(m) + "." + parts[2]
	}()
	badSig := func() string {
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		sig[0] ^= 0xff
		return parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	}()
	expired := issue(t, ks, IssueOptions{Kind: KindProject, TTL: time.Minute, Now: time.Now().Add(-time.Hour)})
	unknownKid := issue(t, other, IssueOptions{Kind: KindProject})
	bigHeader := b64(map[string]any{"alg": "EdDSA", "pad": strings.Repeat("x", MaxLength)}) + "." + parts[1] + "." + parts[2]
	_, randomPriv, _ := ed25519.GenerateKey(rand.Reader)
	foreignNoKid := func() string {
		h := b64(map[string]any{"alg": "EdDSA"})
		p := parts[1]
		return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(randomPriv, []byte(h+"."+p)))
	}()

	cases := []struct {
		name string
		raw  string
		want error
	}{
		{"alg_none", b64(map[string]any{"alg": "none", "typ": "JWT"}) + "." + parts[1] + ".", ErrAlgorithm},
		{"hs256_with_public_key", hs256, ErrAlgorithm},
		{"unknown_kid", unknownKid, ErrUnknownKey},
		{"tampered_payload", tampered, ErrSignature},
		{"bad_signature", badSig, ErrSignature},
		{"foreign_key_without_kid", foreignNoKid, ErrSignature},
		{"expired", expired, ErrExpired},
		{"malformed_two_parts", parts[0] + "." + parts[1], ErrMalformed},
		{"truncated", good[:len(good)/2], ErrMalformed},
		{"garbage", "not-a-token", ErrMalformed},
		{"empty", "", ErrMalformed},
		{"oversized_header", bigHeader, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ks.Verify(tc.raw, time.Time{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify error = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestKeyRotationAndRetire(t *testing.T) {
	dir := t.TempDir()
	ks, err := OpenKeySet(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := issue(t, ks, IssueOptions{Kind: KindProject})
	oldKid := ks.ActiveID()
	if _, err := ks.Rotate(); err != nil {
		t.Fatal(err)
	}
	newTok := issue(t, ks, IssueOptions{Kind: KindProject})
	for _, raw := range []string{old, newTok} {
		if _, err := ks.Verify(raw, time.Time{}); err != nil {
			t.Fatalf("after rotate: %v", err)
		}
	}
	if len(ks.JWKS()["keys"]) != 2 {
		t.Fatalf("jwks = %+v", ks.JWKS())
	}
	if err := ks.Retire(ks.ActiveID()); err == nil {
		t.Fatal("retiring the active key must fail")
	}
	if err := ks.Retire(oldKid); err != nil {
		t.Fatal(err)
	}
	// The private keys and the state are written 0600.
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) < 3 {
		t.Fatalf("key dir holds %v, want two keys and the state", files)
	}
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v; want mode 0600", f, fi.Mode(), err)
		}
	}
	// State survives a reopen.
	ks2, err := OpenKeySet(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks2.Verify(old, time.Time{}); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old token after retire: %v, want ErrUnknownKey", err)
	}
	if _, err := ks2.Verify(newTok, time.Time{}); err != nil {
		t.Fatalf("new token after reopen: %v", err)
	}
}

// TestVerifyRecorded: a token whose recorded sum matches is accepted
// without its signature being checked (the record stands for the
// verification that wrote it), but still not once expired, under a
// retired key, or with another algorithm; a token that does not match
// its record is verified in full.
func TestVerifyRecorded(t *testing.T) {
	ks := newKeySet(t)
	now := time.Now()
	raw := issue(t, ks, IssueOptions{Kind: KindAgent, Subject: "agent-1", TTL: time.Hour, Now: now})
	parts := strings.Split(raw, ".")
	// Same header and claims, another (invalid) signature.
	forged := parts[0] + "." + parts[1] + "." + b64("not the signature")
	var sawSubject string
	record := func(tok string) func(*Claims) ([32]byte, bool) {
		return func(c *Claims) ([32]byte, bool) { sawSubject = c.Subject; return Sum(tok), true }
	}
	c, err := ks.VerifyRecorded(raw, now, record(raw))
	if err != nil || c.Subject != "agent-1" || c.KeyID != ks.ActiveID() || c.Kind() != KindAgent {
		t.Fatalf("recorded token: %+v, %v; want agent-1's claims under the active key", c, err)
	}
	if sawSubject != "agent-1" {
		t.Errorf("recorded got subject %q, want the token's", sawSubject)
	}
	// The record, not the signature, vouches for a matching token: this
	// is the shortcut (a store that records forged tokens is the
	// attacker's already).
	if _, err := ks.VerifyRecorded(forged, now, record(forged)); err != nil {
		t.Errorf("token matching its record: %v; want accepted without a signature check", err)
	}
	// Not matching its record, or no record: verified in full.
	if _, err := ks.VerifyRecorded(forged, now, record(raw)); !errors.Is(err, ErrSignature) {
		t.Errorf("forged token against the real one's record: %v, want ErrSignature", err)
	}
	if _, err := ks.VerifyRecorded(forged, now, func(*Claims) ([32]byte, bool) { return [32]byte{}, false }); !errors.Is(err, ErrSignature) {
		t.Errorf("forged token without a record: %v, want ErrSignature", err)
	}
	if _, err := ks.VerifyRecorded(raw, now, func(*Claims) ([32]byte, bool) { return [32]byte{}, false }); err != nil {
		t.Errorf("good token without a record: %v", err)
	}
	// Time claims still count.
	if _, err := ks.VerifyRecorded(raw, now.Add(2*time.Hour), record(raw)); !errors.Is(err, ErrExpired) {
		t.Errorf("recorded token past its expiry: %v, want ErrExpired", err)
	}
	// Another algorithm is never taken on a record.
	none := b64(map[string]string{"alg": "none", "kid": ks.ActiveID()}) + "." + parts[1] + "."
	if _, err := ks.VerifyRecorded(none, now, record(none)); !errors.Is(err, ErrAlgorithm) {
		t.Errorf("alg none with a matching record: %v, want ErrAlgorithm", err)
	}
	// A retired key's tokens fail even when recorded.
	oldKid := ks.ActiveID()
	if _, err := ks.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := ks.Retire(oldKid); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.VerifyRecorded(raw, now, record(raw)); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("recorded token of a retired key: %v, want ErrUnknownKey", err)
	}
}

func FuzzVerify(f *testing.F) {
	ks, err := OpenKeySet(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	good, _, _ := ks.Issue(IssueOptions{Kind: KindProject, ProjectID: "p"})
	f.Add(good)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := ks.Verify(raw, time.Time{})
		if err == nil && (c == nil || c.ID == "") {
			t.Fatalf("accepted token without jti: %q", raw)
		}
	})
}

// FuzzVerifyRecorded: whatever the input, a token accepted on a
// matching record (the worst case: the record holds its sum) names an
// EdDSA key of the set and carries a jti and a project.
func FuzzVerifyRecorded(f *testing.F) {
	ks, err := OpenKeySet(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	good, _, _ := ks.Issue(IssueOptions{Kind: KindAgent, ProjectID: "p", Subject: "a1", TTL: time.Hour})
	parts := strings.Split(good, ".")
	f.Add(good)
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add(b64(map[string]string{"alg": "none", "kid": ks.ActiveID()}) + "." + parts[1] + ".")
	f.Add(parts[0] + "." + b64(map[string]any{"sub": "a1"}) + "." + parts[2])
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := ks.VerifyRecorded(raw, time.Time{}, func(*Claims) ([32]byte, bool) { return Sum(raw), true })
		if err != nil {
			return
		}
		if c == nil || c.ID == "" || (!c.Admin && c.ProjectID == "") {
			t.Fatalf("accepted a token without jti or project: %q → %+v", raw, c)
		}
		if _, ok := ks.verifier(c.KeyID); !ok {
			t.Fatalf("accepted a token under kid %q, no live key: %q", c.KeyID, raw)
		}
		tok, _, err := jwt.NewParser().ParseUnverified(raw, &Claims{})
		if err != nil || tok.Header["alg"] != "EdDSA" {
			t.Fatalf("accepted a token that is not EdDSA: %q (%v)", raw, err)
		}
	})
}

// BenchmarkVerify: an agent credential's verification, which a reconnect
// storm runs once per agent. recorded: the same credential checked
// against its recorded sum (VerifyRecorded). decode: the claims alone
// (UnmarshalJSON).
func BenchmarkVerify(b *testing.B) {
	ks, raw := agentCredential(b)
	b.Run("verify", func(b *testing.B) {
		for b.Loop() {
			if _, err := ks.Verify(raw, time.Time{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	sum := Sum(raw)
	b.Run("recorded", func(b *testing.B) {
		for b.Loop() {
			if _, err := ks.VerifyRecorded(raw, time.Time{}, func(*Claims) ([32]byte, bool) { return sum, true }); err != nil {
				b.Fatal(err)
			}
		}
	})
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(raw, ".")[1])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			var c Claims
			if err := json.Unmarshal(payload, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// stdClaims is Claims.UnmarshalJSON on encoding/json alone: the reading
// the faster decoder must keep.
func stdClaims(b []byte) (*Claims, error) {
	type plain Claims
	var aux struct {
		plain
		IssuedAt json.Number `json:"iat,omitempty"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return nil, err
	}
	c := Claims(aux.plain)
	c.IssuedAt = nil
	if aux.IssuedAt != "" {
		f, err := aux.IssuedAt.Float64()
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return nil, fmt.Errorf("iat %q", aux.IssuedAt)
		}
		c.IssuedAt = jwt.NewNumericDate(normalizeEpoch(f))
	}
	return &c, nil
}

// FuzzClaimsDecode: a token payload decodes (through encoding/json, as
// the JWT parser does) to what encoding/json alone reads, or fails when
// it fails.
func FuzzClaimsDecode(f *testing.F) {
	f.Add(`{"iss":"https://f","sub":"a1","aud":["p"],"exp":1790000000,"iat":1790000000123,"jti":"j","projectId":"p","fleet":true,"labels":{"a":"b"}}`)
	f.Add(`{"aud":"p","exp":1.5e9,"nbf":null,"iat":"1"}`)
	f.Add(`{"labels":{"a":1},"maxUses":2.5}`)
	f.Add(`{"jti":"x","JTI":"y","jti":"z"}`)
	f.Add(`{"exp":"1790000000","aud":[],"NBF":-1.5}`)
	f.Add(`{"exp":"","nbf":1e400,"aud":["a",1]}`)
	f.Add(`{"aud":{"a":1},"exp":true,"Aud":"x"}`)
	f.Fuzz(func(t *testing.T, payload string) {
		want, wantErr := stdClaims([]byte(payload))
		var got Claims
		err := json.Unmarshal([]byte(payload), &got)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("decode %q: error %v, encoding/json alone: %v", payload, err, wantErr)
		}
		if err != nil {
			return
		}
		if diff := cmp.Diff(want, &got); diff != "" {
			t.Fatalf("decode %q differs from encoding/json alone (-want +got):\n%s", payload, diff)
		}
	})
}

// FuzzDecodeUnverified: whatever jwt's parser reads from a token,
// VerifyRecorded's own reading (decodeUnverified) reads the same: the
// same claims and the same alg and kid. (It may read more than jwt's
// parser: a token it reads is accepted only if it hashes to a token that
// Verify accepted.)
func FuzzDecodeUnverified(f *testing.F) {
	_, raw := agentCredential(f)
	f.Add(raw)
	f.Add("eyJhbGciOiJub25lIn0.eyJqdGkiOiJ4In0.")
	f.Add("a.b.c.d")
	f.Add("eyJhbGciOiJFZERTQSIsImtpZCI6MX0.e30.x")
	f.Fuzz(func(t *testing.T, raw string) {
		want := &Claims{}
		tok, _, err := jwt.NewParser().ParseUnverified(raw, want)
		if err != nil {
			return
		}
		got, header, ok := decodeUnverified(raw)
		if !ok {
			t.Fatalf("%q: jwt's parser reads it, decodeUnverified does not", raw)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("%q: claims differ from jwt's parser (-jwt +ours):\n%s", raw, diff)
		}
		for _, k := range []string{"alg", "kid"} {
			if !reflect.DeepEqual(tok.Header[k], header[k]) {
				t.Fatalf("%q: header %s %v, jwt's parser %v", raw, k, header[k], tok.Header[k])
			}
		}
	})
}
