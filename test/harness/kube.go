package harness

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Kube is a running etcd and kube-apiserver on loopback ports. There is no
// kubelet or controller manager: tests create pods with spec.nodeName and
// write their status through the status subresource.
type Kube struct {
	// Kubeconfig is the path of a kubeconfig file for the admin user.
	Kubeconfig string
	// Token is the admin bearer token (group system:masters).
	Token string
	// URL is the API server's address, "https://127.0.0.1:<port>".
	URL string
	// Config is a client config for the admin user.
	Config *rest.Config
	// Clientset is a client for the admin user.
	Clientset kubernetes.Interface

	dir     string
	procs   []*exec.Cmd
	stopped sync.Once
}

// KubeAPIServerBinary returns the path of the kube-apiserver binary in the
// bin dir. When it is missing and privileged parts are required it builds it
// from test/tools/kube-apiserver (about four minutes the first time);
// otherwise it returns an error wrapping ErrUnavailable.
func KubeAPIServerBinary(ctx context.Context) (string, error) {
	bin, err := BinDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(bin, "kube-apiserver")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if !Required() {
		return "", fmt.Errorf("%s missing (run make setup): %w", path, ErrUnavailable)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", path, ".")
	cmd.Dir = filepath.Join(root, "test", "tools", "kube-apiserver")
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build kube-apiserver: %w\n%s", err, out)
	}
	return path, nil
}

// StartKube starts etcd and kube-apiserver for one test and stops them at
// its end. Prefer NewKube in TestMain to share one per package.
func StartKube(t testing.TB) *Kube {
	t.Helper()
	k, err := NewKube(t.Context())
	Require(t, err)
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// NewKube starts etcd and kube-apiserver and waits until /readyz is ok.
// Close stops them. ctx bounds the start only.
func NewKube(ctx context.Context) (*Kube, error) {
	etcdPath, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcd (apt-get install etcd-server): %w: %w", ErrUnavailable, err)
	}
	apiserver, err := KubeAPIServerBinary(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "fleetprof-kube-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	k := &Kube{dir: dir}
	if err := k.start(ctx, etcdPath, apiserver); err != nil {
		_ = k.Close()
		return nil, err
	}
	return k, nil
}

func (k *Kube) start(ctx context.Context, etcdPath, apiserver string) error {
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	etcd := exec.Command(etcdPath,
		"--name", "default",
		"--data-dir", filepath.Join(k.dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer,
		"--log-level", "error")
	if err := k.spawn(etcd, "etcd.log"); err != nil {
		return err
	}

	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	k.Token = hex.EncodeToString(tok)
	if err := os.WriteFile(filepath.Join(k.dir, "tokens.csv"), []byte(k.Token+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate service account key: %w", err)
	}
	keyPath := filepath.Join(k.dir, "sa.key")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("write service account key: %w", err)
	}
	k.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	api := exec.Command(apiserver,
		"--etcd-servers", client,
		"--token-auth-file", filepath.Join(k.dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-key-file", keyPath,
		"--service-account-signing-key-file", keyPath,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--secure-port", fmt.Sprint(ports[2]),
		"--bind-address", "127.0.0.1",
		"--cert-dir", filepath.Join(k.dir, "certs"),
		// No controller manager creates "default" service accounts.
		"--disable-admission-plugins", "ServiceAccount",
		// As kubeadm and managed clusters do: privileged pods may be
		// created (the agent's privileged fallback is checked against it).
		"--allow-privileged=true",
		"--v", "0")
	if err := k.spawn(api, "kube-apiserver.log"); err != nil {
		return err
	}

	if err := k.waitReady(ctx, 90*time.Second); err != nil {
		return err
	}
	k.Kubeconfig = filepath.Join(k.dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, k.URL, k.Token)
	if err := os.WriteFile(k.Kubeconfig, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	k.Config = cfg
	if k.Clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("new clientset: %w", err)
	}
	return nil
}

// spawn starts a child with its output in a log file under the temp dir.
func (k *Kube) spawn(cmd *exec.Cmd, logName string) error {
	f, err := os.Create(filepath.Join(k.dir, logName))
	if err != nil {
		return fmt.Errorf("create %s: %w", logName, err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	f.Close()
	k.procs = append(k.procs, cmd)
	return nil
}

// waitReady polls /readyz with the admin token.
func (k *Kube) waitReady(ctx context.Context, limit time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		for _, c := range k.procs {
			if c.ProcessState != nil {
				return fmt.Errorf("%s exited: %s", c.Path, k.Logs())
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, k.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.Token)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for kube-apiserver: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after %s: %w\n%s", limit, last, k.Logs())
}

// Logs returns the tail of the etcd and kube-apiserver logs.
func (k *Kube) Logs() string {
	var out string
	for _, n := range []string{"etcd.log", "kube-apiserver.log"} {
		b, _ := os.ReadFile(filepath.Join(k.dir, n))
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		out += "--- " + n + "\n" + string(b)
	}
	return out
}

// Close stops kube-apiserver and etcd and removes their data.
func (k *Kube) Close() error {
	var errs []error
	k.stopped.Do(func() {
		for i := len(k.procs) - 1; i >= 0; i-- {
			c := k.procs[i]
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		if err := os.RemoveAll(k.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", k.dir, err))
		}
	})
	return errors.Join(errs...)
}
