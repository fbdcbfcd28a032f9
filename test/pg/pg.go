package pg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Errors.
var (
	// ErrNotInstalled: no PostgreSQL binaries under /usr/lib/postgresql.
	ErrNotInstalled = errors.New("postgresql is not installed (apt-get install postgresql)")
)

// Server is a running PostgreSQL cluster owned by a test process.
type Server struct {
	Bin  string // directory of initdb, pg_ctl, postgres
	Dir  string // the parent temp dir (data dir is Dir/data)
	Port int
	// Durable keeps fsync on (as in production); tests default to off.
	Durable bool
	// runAs is the OS user that runs the server ("" when we are not root).
	runAs string
	mu    sync.Mutex
	dbs   int
}

// BinDir finds the newest /usr/lib/postgresql/*/bin with initdb.
func BinDir() (string, error) {
	ms, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(ms) == 0 {
		return "", ErrNotInstalled
	}
	sort.Slice(ms, func(i, j int) bool { return version(ms[i]) > version(ms[j]) })
	return filepath.Dir(ms[0]), nil
}

func version(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

// Start creates a cluster in a new temp dir and starts it on a free
// loopback port. As root, the cluster runs as the "postgres" OS user
// (initdb refuses root), which owns the temp dir. Call Stop to remove it.
func Start(ctx context.Context) (*Server, error) { return StartWith(ctx, Options{}) }

// Options configures StartWith.
type Options struct {
	// Durable keeps fsync and synchronous commit on, as in production
	// (for benchmarks); false turns fsync off, which tests prefer.
	Durable bool
}

// StartWith is Start with options.
func StartWith(ctx context.Context, o Options) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	// As root the server runs as postgres, which must reach the dir: use
	// /tmp rather than a $TMPDIR that may sit under a private home.
	base := ""
	if os.Geteuid() == 0 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "fleetprof-pg-")
	if err != nil {
		return nil, fmt.Errorf("create pg dir: %w", err)
	}
	s := &Server{Bin: bin, Dir: dir, Durable: o.Durable}
	if os.Geteuid() == 0 {
		s.runAs = "postgres"
		u, err := user.Lookup(s.runAs)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("look up user postgres: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("chown pg dir: %w", err)
		}
	}
	if out, err := s.run(ctx, "initdb", "-D", s.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.Port = port
	if err := s.Restart(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) data() string { return filepath.Join(s.Dir, "data") }

func (s *Server) run(ctx context.Context, prog string, args ...string) ([]byte, error) {
	full := filepath.Join(s.Bin, prog)
	var cmd *exec.Cmd
	if s.runAs != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", s.runAs, "--", full}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, full, args...)
	}
	cmd.Dir = s.Dir
	return cmd.CombinedOutput()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Restart starts the server (again) on the same port and waits until it
// accepts connections.
func (s *Server) Restart(ctx context.Context) error {
	fsync := "off"
	if s.Durable {
		fsync = "on"
	}
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s -c fsync=%s -c max_connections=200 -c shared_buffers=32MB",
		s.Port, s.Dir, fsync)
	if out, err := s.run(ctx, "pg_ctl", "-D", s.data(), "-l", filepath.Join(s.Dir, "log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.Dir, "log"))
		return fmt.Errorf("pg_ctl start: %w: %s\n%s", err, out, tail(log))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			c.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not accepting connections: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// StopServer stops the server (fast shutdown: open connections are
// closed) but keeps its data, so Restart brings it back.
func (s *Server) StopServer(ctx context.Context) error {
	if out, err := s.run(ctx, "pg_ctl", "-D", s.data(), "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	return nil
}

// Stop stops the server and removes its directory.
func (s *Server) Stop() {
	_, _ = s.run(context.Background(), "pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "-t", "30", "stop")
	_ = os.RemoveAll(s.Dir)
}

// DSN returns a connection string for database db as user postgres.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// NewDatabase creates a fresh, empty database and returns its DSN.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	s.mu.Lock()
	s.dbs++
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.dbs)
	s.mu.Unlock()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect to postgres: %w", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return s.DSN(name), nil
}

// Required reports whether tests must not skip for want of PostgreSQL
// (FLEETPROF_REQUIRE_PRIVILEGED=1, set in CI).
func Required() bool {
	v := strings.TrimSpace(os.Getenv("FLEETPROF_REQUIRE_PRIVILEGED"))
	return v != "" && v != "0"
}
