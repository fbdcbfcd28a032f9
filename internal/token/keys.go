package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
)

// Key is one Ed25519 signing key of the fleet.
type Key struct {
	ID      string    // kid: base64url of the first 12 bytes of sha256(public key)
	Created time.Time // when the key was made
	Retired bool      // a retired key no longer verifies anything
	private ed25519.PrivateKey
}

// Public returns the key's public half.
func (k *Key) Public() ed25519.PublicKey { return k.private.Public().(ed25519.PublicKey) }

// KeySet holds the fleet's signing keys: one active key signs, every
// non-retired key verifies. It is stored in a directory (one PEM file per
// key plus a small JSON state file). All methods are goroutine-safe.
type KeySet struct {
	dir    string
	mu     sync.RWMutex
	keys   map[string]*Key
	active string
}

type keyState struct {
	Active  string   `json:"active"`
	Retired []string `json:"retired,omitempty"`
}

// OpenKeySet loads the key set from dir, creating dir and a first key when
// there is none. Key files are written 0600.
func OpenKeySet(dir string) (*KeySet, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key dir: %w", err)
	}
	ks := &KeySet{dir: dir, keys: map[string]*Key{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read key dir: %w", err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".pem") {
			continue
		}
		k, err := readKey(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ks.keys[k.ID] = k
	}
	var st keyState
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read key state: %w", err)
	default:
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, fmt.Errorf("parse key state %s: %w", filepath.Join(dir, "state.json"), err)
		}
	}
	for _, id := range st.Retired {
		if k, ok := ks.keys[id]; ok {
			k.Retired = true
		}
	}
	if k, ok := ks.keys[st.Active]; ok && !k.Retired {
		ks.active = st.Active
	}
	if ks.active == "" {
		if _, err := ks.Rotate(); err != nil {
			return nil, err
		}
	}
	return ks, nil
}

func readKey(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("key file %s: no PEM block", path)
	}
	pk, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	priv, ok := pk.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key file %s: not an Ed25519 key", path)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("stat key: %w", err)
	}
	k := &Key{private: priv, Created: st.ModTime()}
	k.ID = KeyID(k.Public())
	return k, nil
}

// KeyID derives a kid from a public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// Rotate creates a new key and makes it the active signer. Older keys keep
// verifying the tokens they signed until they are retired.
func (ks *KeySet) Rotate() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	k := &Key{private: priv, Created: time.Now()}
	k.ID = KeyID(k.Public())
	path := filepath.Join(ks.dir, k.ID+".pem")
	if err := writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		return nil, err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.keys[k.ID] = k
	prev := ks.active
	ks.active = k.ID
	if err := ks.saveLocked(); err != nil {
		ks.active = prev
		return nil, err
	}
	return k, nil
}

// Retire stops a key from verifying. The active key cannot be retired.
func (ks *KeySet) Retire(kid string) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	k, ok := ks.keys[kid]
	if !ok {
		return fmt.Errorf("retire key %q: %w", kid, ErrUnknownKey)
	}
	if kid == ks.active {
		return fmt.Errorf("retire key %q: it is the active signing key; rotate first", kid)
	}
	k.Retired = true
	return ks.saveLocked()
}

func (ks *KeySet) saveLocked() error {
	st := keyState{Active: ks.active}
	for id, k := range ks.keys {
		if k.Retired {
			st.Retired = append(st.Retired, id)
		}
	}
	sort.Strings(st.Retired)
	b, _ := json.Marshal(st)
	return writeFileAtomic(filepath.Join(ks.dir, "state.json"), b)
}

// Keys lists the keys, newest first.
func (ks *KeySet) Keys() []Key {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	out := make([]Key, 0, len(ks.keys))
	for _, k := range ks.keys {
		out = append(out, Key{ID: k.ID, Created: k.Created, Retired: k.Retired})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// ActiveID returns the kid of the signing key.
func (ks *KeySet) ActiveID() string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.active
}

func (ks *KeySet) signer() *Key {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.keys[ks.active]
}

// verifier returns the non-retired key with that kid.
func (ks *KeySet) verifier(kid string) (*Key, bool) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, ok := ks.keys[kid]
	if !ok || k.Retired {
		return nil, false
	}
	return k, true
}

// verifiers returns every non-retired public key (for tokens without kid).
func (ks *KeySet) verifiers() []ed25519.PublicKey {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var out []ed25519.PublicKey
	for _, k := range ks.keys {
		if !k.Retired {
			out = append(out, k.Public())
		}
	}
	return out
}

// JWK is one entry of a JSON Web Key Set (RFC 8037 OKP key).
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

// JWKS returns the public keys that verify tokens, for
// /.well-known/jwks.json.
func (ks *KeySet) JWKS() map[string][]JWK {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	keys := []JWK{}
	for _, k := range ks.keys {
		if k.Retired {
			continue
		}
		keys = append(keys, JWK{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(k.Public()), Kid: k.ID, Alg: "EdDSA", Use: "sig"})
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Kid < keys[j].Kid })
	return map[string][]JWK{"keys": keys}
}

// writeFileAtomic replaces path with data, 0600, atomically: the new
// content is written and synced to a temporary file beside it, which is
// then renamed over path (google/renameio), so a crash leaves the old
// file or the new one, never a torn one.
func writeFileAtomic(path string, data []byte) error {
	f, err := renameio.NewPendingFile(path, renameio.WithPermissions(0o600), renameio.IgnoreUmask())
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer f.Cleanup()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
