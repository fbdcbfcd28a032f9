package s3

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/fleetprof/fleetprof/test/harness"
)

// Binary is the name of the server binary in the harness's bin dir,
// built there by test/setup.d/50-s3.sh.
const Binary = "versitygw"

// Server is a running versitygw owned by a test process.
type Server struct {
	// Endpoint is host:port (plain HTTP).
	Endpoint string
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string
	// Dir is the temp dir: Dir/root holds the buckets, Dir/log the output.
	Dir string

	bin  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	n    int
}

// Start builds nothing: it runs the versitygw found in harness.BinDir on a
// free loopback port with a POSIX root in a new temp dir, and waits until
// it answers S3 requests. The error wraps harness.ErrUnavailable when the
// binary is missing. Call Close to stop it and remove the dir.
func Start(ctx context.Context) (*Server, error) {
	bd, err := harness.BinDir()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(bd, Binary)
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%s (run test/setup.d/50-s3.sh): %w: %w", bin, harness.ErrUnavailable, err)
	}
	dir, err := os.MkdirTemp("", "fleetprof-s3-")
	if err != nil {
		return nil, fmt.Errorf("create s3 dir: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "root"), 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("create s3 root: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{Endpoint: "127.0.0.1:" + strconv.Itoa(port), AccessKey: "fleetprof-test", SecretKey: randHex(16), Dir: dir, bin: bin}
	if err := s.Restart(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// Restart starts the server (again) on the same port and root and waits
// until it answers.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("s3 server is running")
	}
	logf, err := os.OpenFile(filepath.Join(s.Dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open s3 log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "--port", s.Endpoint, "--quiet", "posix", filepath.Join(s.Dir, "root"))
	// Credentials through the environment, not the command line.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c, err := s.Client()
	if err != nil {
		cmd.Process.Kill()
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = c.ListBuckets(rctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-done:
			return fmt.Errorf("versitygw exited: %s", s.logTail())
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("versitygw not answering on %s: %w\n%s", s.Endpoint, err, s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.cmd, s.done = cmd, done
	return nil
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// StopServer kills the server (SIGKILL) and waits for it, keeping its
// data so that Restart brings it back.
func (s *Server) StopServer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Close stops the server and removes its dir.
func (s *Server) Close() {
	s.StopServer()
	os.RemoveAll(s.Dir)
}

// Client returns a minio-go client with the root credentials.
func (s *Server) Client() (*minio.Client, error) {
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), MaxRetries: 1})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	return c, nil
}

// NewBucket creates a fresh, empty bucket and returns its name.
func (s *Server) NewBucket(ctx context.Context) (string, error) {
	s.mu.Lock()
	s.n++
	name := fmt.Sprintf("t%d-%d-%s", os.Getpid(), s.n, randHex(3))
	s.mu.Unlock()
	c, err := s.Client()
	if err != nil {
		return "", err
	}
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		return "", fmt.Errorf("create bucket %s: %w", name, err)
	}
	return name, nil
}

// New starts a server for one test and stops it at its end; it skips the
// test when versitygw is not built, or fails it under
// FLEETPROF_REQUIRE_PRIVILEGED=1.
func New(t testing.TB) *Server {
	t.Helper()
	s, err := Start(t.Context())
	harness.Require(t, err)
	t.Cleanup(s.Close)
	return s
}

// Bucket creates a fresh bucket on s for t.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	b, err := s.NewBucket(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
