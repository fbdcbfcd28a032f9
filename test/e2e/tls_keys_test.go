package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprof/fleetprof/agent/upload"
	"github.com/fleetprof/fleetprof/fleet/profiles/profilestest"
	"github.com/fleetprof/fleetprof/test/fleettest"
)

// selfSigned writes a CA-less self-signed certificate for 127.0.0.1.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleetprof-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	kb, _ := x509.MarshalECPrivateKey(key)
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestTLS: the fleet serves HTTPS, wss and gRPC over HTTP/2 on one port;
// an agent that trusts it through --tls-ca-file enrolls, one that does not
// is refused, and profiles upload over TLS.
func TestTLS(t *testing.T) {
	cert, key := selfSigned(t)
	addr := fleettest.FreeAddr(t)
	f := fleettest.StartFleetTLS(t, addr, cert, key)
	project := f.MustCLI("project", "create", "tls")
	boot := f.MustCLI("token", "create", "--project", project, "--name", "b", "--scope", "enroll")
	write := f.MustCLI("token", "create", "--project", project, "--name", "w", "--scope", "write-profiles")

	untrusting := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--bootstrap-token", boot)
	ag := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--tls-ca-file", cert, "--bootstrap-token", boot)
	waitConnected(t, f, project, "", true, 20*time.Second)
	if n := len(agents(t, f, project)); n != 1 {
		t.Fatalf("%d agents enrolled; the one without the CA must not enroll", n)
	}
	if !strings.Contains(untrusting.Log(), "certificate") {
		t.Errorf("agent without the CA does not say why:\n%s", tail(untrusting.Log(), 10))
	}
	_ = ag

	// gRPC WriteRaw over TLS + HTTP/2 with a write-profiles token.
	up, err := upload.New(upload.Options{Address: addr, TLSCAFile: cert, Token: func() string { return write }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = up.Run(ctx) }()
	p := profilestest.CPU(time.Now(), time.Second, [][]string{{"main", "tls_fn"}}, []int64{7})
	up.Enqueue([]upload.Profile{{Labels: map[string]string{"__name__": "process_cpu", "via": "tls"}, Start: time.Now(), Duration: time.Second, Data: profilestest.Gzipped(p)}})
	fleettest.Eventually(t, 20*time.Second, "TLS upload stored", func() (bool, string) {
		var vals []string
		err := f.Client().Do(ctx, http.MethodGet, "/api/v1/projects/"+project+"/profiles/labels/via/values", nil, &vals)
		return err == nil && len(vals) == 1 && vals[0] == "tls", ""
	})
}

// TestSigningKeyRotation: a new key signs new tokens while tokens of the
// old key keep working; after agents moved to new-key credentials (a bulk
// rotation), retiring the old key refuses old-key tokens and closes the
// connections still using one. Revoking by selector cuts those agents off.
func TestSigningKeyRotation(t *testing.T) {
	f := fleettest.StartFleet(t)
	project := f.MustCLI("project", "create", "keys")
	bootA := f.MustCLI("token", "create", "--project", project, "--name", "a", "--scope", "enroll", "--labels", "group=a")
	bootC := f.MustCLI("token", "create", "--project", project, "--name", "c", "--scope", "enroll", "--labels", "group=c")
	c := f.Client()
	ctx := t.Context()
	var keys struct{ Active string }
	if err := c.Do(ctx, http.MethodGet, "/api/v1/keys", nil, &keys); err != nil {
		t.Fatal(err)
	}
	oldKid := keys.Active
	agA := fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", bootA)
	fleettest.StartAgent(t, "", "--fleet-address", f.URL, "--insecure", "--bootstrap-token", bootC)
	allConnected(t, f, project, 2, 20*time.Second)

	var rotated struct{ Active string }
	if err := c.Do(ctx, http.MethodPost, "/api/v1/keys/rotate", struct{}{}, &rotated); err != nil || rotated.Active == oldKid {
		t.Fatalf("rotate key: %v %+v", err, rotated)
	}
	newTok := f.MustCLI("token", "create", "--project", project, "--name", "n", "--scope", "enroll")
	if kidOf(t, newTok) != rotated.Active || kidOf(t, bootA) != oldKid {
		t.Fatal("tokens not signed by the expected keys")
	}
	// Old-key tokens still verify.
	if code := opampStatus(t, f.URL, bootA); code != http.StatusBadRequest {
		t.Fatalf("old-key token before retirement: %d, want admitted (400)", code)
	}
	// Move group c onto new-key credentials, then retire the old key.
	f.MustCLI("agents", "rotate-credentials", "--project", project, "--selector", "group=c")
	fleettest.Eventually(t, 20*time.Second, "group c rotated", func() (bool, string) {
		var st struct{ Rotated int }
		err := c.Do(ctx, http.MethodGet, "/api/v1/projects/"+project+"/agents/rotation?selector=group%3Dc", nil, &st)
		return err == nil && st.Rotated == 1, fmt.Sprintf("%+v", st)
	})
	allConnected(t, f, project, 2, 20*time.Second)
	// The admin token itself was signed by the old key: the fleet refuses
	// to let it retire that key, so a new admin token does it.
	if err := c.Do(ctx, http.MethodPost, "/api/v1/keys/"+oldKid+"/retire", struct{}{}, nil); err == nil {
		t.Fatal("an admin token retired the key that signed it")
	}
	f.AdminToken = f.MustCLI("admin-token", "create", "--name", "after-rotation")
	c = f.Client()
	if err := c.Do(ctx, http.MethodPost, "/api/v1/keys/"+oldKid+"/retire", struct{}{}, nil); err != nil {
		t.Fatal(err)
	}
	if code := opampStatus(t, f.URL, bootA); code != http.StatusUnauthorized {
		t.Fatalf("old-key token after retirement: %d, want 401", code)
	}
	if code := opampStatus(t, f.URL, newTok); code != http.StatusBadRequest {
		t.Fatalf("new-key token after retirement: %d, want admitted", code)
	}
	fleettest.Eventually(t, 5*time.Second, "agent a (old-key credential) cut off, c still on", func() (bool, string) {
		on := map[string]bool{}
		for _, a := range agents(t, f, project) {
			on[a.Labels["group"]] = a.Connected
		}
		return !on["a"] && on["c"], fmt.Sprintf("connected: %v", on)
	})
	fleettest.Eventually(t, 15*time.Second, "agent a says it must re-enroll", func() (bool, string) {
		return strings.Contains(agA.Log(), "bootstrap token rejected") || strings.Contains(agA.Log(), "no longer valid"), tail(agA.Log(), 5)
	})
	var jwks struct{ Keys []struct{ Kid string } }
	resp, err := http.Get(f.URL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&jwks)
	resp.Body.Close()
	if len(jwks.Keys) != 1 || jwks.Keys[0].Kid != rotated.Active {
		t.Fatalf("JWKS after retirement: %+v", jwks)
	}

	// Revoke every agent of a selector: group c is disconnected within 5 s.
	var rr struct{ Selected, Revoked int }
	if err := c.Do(ctx, http.MethodPost, "/api/v1/projects/"+project+"/agents/revoke", map[string]string{"selector": "group=c"}, &rr); err != nil || rr.Revoked != 1 {
		t.Fatalf("revoke by selector: %v %+v", err, rr)
	}
	fleettest.Eventually(t, 5*time.Second, "group c disconnected", func() (bool, string) {
		for _, a := range agents(t, f, project) {
			if a.Labels["group"] == "c" && a.Connected {
				return false, ""
			}
		}
		return true, ""
	})
}

func kidOf(t *testing.T, tok string) string {
	t.Helper()
	h, err := base64URL(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct{ Kid string }
	_ = json.Unmarshal(h, &hdr)
	return hdr.Kid
}

func base64URL(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
