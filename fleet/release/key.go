package release

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeyFile is the release signing key's file name in the data dir. It is
// a key of its own, never one of the token signing keys: a leaked token
// key must not let anyone ship code to every host.
const KeyFile = "release-key.pem"

// SignedMessage is what the release key signs for a release: the version
// and the hex sha256 of its binary, so that a signature of one version
// cannot be replayed for another. The agent (agent/upgrade) builds the
// same bytes.
func SignedMessage(version, sha256Hex string) []byte {
	return []byte("fleetprof-agent-release\n" + version + "\n" + sha256Hex + "\n")
}

// Sign signs a release with key.
func Sign(key ed25519.PrivateKey, version, sha256Hex string) []byte {
	return ed25519.Sign(key, SignedMessage(version, sha256Hex))
}

// Verify checks a release signature.
func Verify(pub ed25519.PublicKey, version, sha256Hex string, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize {
		return false
	}
	if _, err := hex.DecodeString(sha256Hex); err != nil {
		return false
	}
	return ed25519.Verify(pub, SignedMessage(version, sha256Hex), sig)
}

// LoadOrCreateKey reads the Ed25519 release key at path (PKCS#8 PEM),
// creating it (0600) when it does not exist.
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate release key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, fmt.Errorf("encode release key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("create dir of release key: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKey(path) // another replica or process won
		}
		if err != nil {
			return nil, fmt.Errorf("create release key: %w", err)
		}
		if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
			f.Close()
			return nil, fmt.Errorf("write release key: %w", err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("write release key: %w", err)
		}
		return priv, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read release key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("release key %s: no PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse release key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("release key %s is %T, want Ed25519", path, k)
	}
	return priv, nil
}

// PublicKeyPEM encodes a public key as PKIX PEM (what agents pin).
func PublicKeyPEM(pub ed25519.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}
