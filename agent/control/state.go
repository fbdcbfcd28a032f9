package control

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/renameio/v2"
	"github.com/google/uuid"
)

// state is what the agent keeps in its state dir: its identity and its
// credential (0600). A restart needs no bootstrap token once enrolled.
type state struct{ dir string }

func (s state) path(name string) string { return filepath.Join(s.dir, name) }

// instanceUID returns the persisted 16-byte instance uid, creating one.
// It is written before the first connection, so an enrollment cut short
// and retried is the same agent.
func (s state) instanceUID() ([16]byte, error) {
	var uid [16]byte
	b, err := os.ReadFile(s.path("instance_uid"))
	if err == nil {
		d, derr := hex.DecodeString(strings.TrimSpace(string(b)))
		if derr == nil && len(d) == 16 {
			copy(uid[:], d)
			return uid, nil
		}
		return uid, fmt.Errorf("state file %s is corrupt (want 32 hex digits); remove it to enroll as a new agent", s.path("instance_uid"))
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return uid, fmt.Errorf("read instance uid: %w", err)
	}
	// A UUIDv7, as OpAMP recommends: the time-ordered ids of agents that
	// enroll one after another sort together, so the fleet's store keeps
	// their records side by side and a push in id order writes them in
	// runs, not one page per agent.
	u, err := uuid.NewV7()
	if err != nil {
		return uid, fmt.Errorf("generate instance uid: %w", err)
	}
	uid = u
	if err := writeFileAtomic(s.path("instance_uid"), []byte(hex.EncodeToString(uid[:])+"\n")); err != nil {
		return uid, err
	}
	return uid, nil
}

func (s state) read(name string) (string, error) {
	b, err := os.ReadFile(s.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (s state) write(name, v string) error { return writeFileAtomic(s.path(name), []byte(v+"\n")) }

// writeFileAtomic replaces path with data, 0600, atomically: the new
// content is written and synced to a temporary file beside it, which is
// then renamed over path (google/renameio), so a crash leaves the old
// file or the new one, never a torn one.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
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
