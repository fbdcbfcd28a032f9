package release

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprof/fleetprof/agent/upgrade"
	"github.com/fleetprof/fleetprof/fleet/store"
	"github.com/fleetprof/fleetprof/fleet/store/sqlite"
)

func TestUploadSignsAndOffers(t *testing.T) {
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m, err := New(Options{Store: st, DataDir: dir, FleetURL: "http://fleet.test:8080"})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("agent binary v2")
	rel, err := m.Upload(t.Context(), "v2", "", bytes.NewReader(body), "admin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Upload(context.Background(), "v2", "", bytes.NewReader(body), "admin"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second upload of v2 = %v, want ErrConflict", err)
	}
	if _, err := m.Upload(t.Context(), "../x", "", bytes.NewReader(body), "admin"); !errors.Is(err, ErrInvalid) {
		t.Errorf("upload of ../x = %v, want ErrInvalid", err)
	}
	// The agent's message and the fleet's are the same bytes.
	if !bytes.Equal(SignedMessage("v2", rel.SHA256), upgrade.SignedMessage("v2", rel.SHA256)) {
		t.Fatal("fleet and agent sign different messages")
	}
	if !Verify(m.PublicKey(), "v2", rel.SHA256, rel.Signature) || Verify(m.PublicKey(), "v3", rel.SHA256, rel.Signature) {
		t.Fatal("signature does not bind the version")
	}
	// The release key is not the token key and survives a restart.
	m2, err := New(Options{Store: st, DataDir: dir, FleetURL: "http://fleet.test:8080"})
	if err != nil {
		t.Fatal(err)
	}
	if !m2.PublicKey().Equal(m.PublicKey()) {
		t.Fatal("release key changed across restarts")
	}
	o := Offer("http://fleet.test:8080", rel)
	p := o.Packages[""]
	if p == nil || p.Version != "v2" || hex.EncodeToString(p.File.ContentHash) != rel.SHA256 ||
		!ed25519.Verify(m.PublicKey(), upgrade.SignedMessage("v2", rel.SHA256), p.File.Signature) ||
		p.File.DownloadUrl != "http://fleet.test:8080/api/v1/releases/v2/download" || len(o.AllPackagesHash) == 0 {
		t.Fatalf("offer = %v", o)
	}
	f, got, err := m.Open(t.Context(), "v2")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got.SHA256 != rel.SHA256 || !strings.HasPrefix(got.Platform, "linux/") && got.Platform == "" {
		t.Fatalf("opened %+v", got)
	}
}
