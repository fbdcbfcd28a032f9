package control

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// The instance uid is a UUIDv7 (OpAMP's recommendation), persisted (0600),
// and the uids of agents created one after another sort in that order
// (the fleet's store keeps their records side by side).
func TestInstanceUIDIsTimeOrderedAndPersisted(t *testing.T) {
	var prev [16]byte
	for i := range 50 {
		s := state{dir: t.TempDir()}
		uid, err := s.instanceUID()
		if err != nil {
			t.Fatal(err)
		}
		if v := uuid.UUID(uid).Version(); v != 7 {
			t.Fatalf("uid %x is a version %d UUID, want 7", uid, v)
		}
		if i > 0 && bytes.Compare(uid[:], prev[:]) <= 0 {
			t.Fatalf("uid %x made after %x sorts before it", uid, prev)
		}
		prev = uid
		again, err := s.instanceUID()
		if err != nil || again != uid {
			t.Fatalf("second read: %x, %v; want %x", again, err, uid)
		}
		if fi, err := os.Stat(s.path("instance_uid")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("instance_uid file: %v, %v; want mode 0600", fi.Mode(), err)
		}
		b, err := os.ReadFile(s.path("instance_uid"))
		if err != nil || strings.TrimSpace(string(b)) != uuid.UUID(uid).String() && strings.TrimSpace(string(b)) != strings.ReplaceAll(uuid.UUID(uid).String(), "-", "") {
			t.Fatalf("persisted %q, %v", b, err)
		}
	}
}
