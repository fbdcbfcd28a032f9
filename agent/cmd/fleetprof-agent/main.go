// Command fleetprof-agent is the host agent: eBPF sampler, discovery,
// upload, and the OpAMP control connection to the fleet.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fleetprof/fleetprof/agent"
	"github.com/fleetprof/fleetprof/agent/upgrade"
	"github.com/fleetprof/fleetprof/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fleetprof-agent:", err)
		if errors.Is(err, upgrade.ErrRestart) {
			os.Exit(upgrade.ExitCode) // the service manager starts the new binary
		}
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(1)
	}
}

// defaultGCPercent is the agent's Go GC target (GOGC) unless $GOGC or
// --gc-percent says otherwise: the heap may grow 50% over the live heap
// between collections instead of Go's 100%. The agent's live heap is a few
// MiB and it allocates little between windows, so this keeps the resident
// set about a quarter smaller for a negligible amount of CPU.
const defaultGCPercent = 50

// applyMemoryPolicy sets the GC target and the soft memory limit. An
// explicit flag wins, then $GOGC / $GOMEMLIMIT, then the defaults (GC at
// defaultGCPercent, no limit).
func applyMemoryPolicy(fs *flag.FlagSet, gcPercent, memoryLimitMiB int) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["gc-percent"] || os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if memoryLimitMiB > 0 {
		debug.SetMemoryLimit(int64(memoryLimitMiB) << 20)
	}
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "upgrade-guard" {
		return upgrade.GuardCommand(args[1:], stderr)
	}
	fs := flag.NewFlagSet("fleetprof-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o agent.Options
	var units listFlag
	var level, tokenFile, labels string
	var gcPercent, memoryLimitMiB int
	fs.IntVar(&gcPercent, "gc-percent", defaultGCPercent, "Go GC target in percent of heap growth over the live heap (like GOGC; $GOGC applies when this flag is not given); lower: smaller RSS, a little more CPU")
	fs.IntVar(&memoryLimitMiB, "memory-limit-mib", 0, "soft Go memory limit in MiB (like GOMEMLIMIT); 0 leaves $GOMEMLIMIT or no limit")
	var showVersion bool
	_, inCluster := os.LookupEnv("KUBERNETES_SERVICE_HOST")
	fs.StringVar(&o.Node, "node", os.Getenv("NODE_NAME"), "node name (default: $NODE_NAME or the hostname)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.Kubernetes, "kubernetes", inCluster, "discover Kubernetes pods on this node")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig for running outside the cluster")
	fs.BoolVar(&o.Insecure, "insecure", false, "allow plaintext connections to the fleet and the remote store")
	fs.Var(&units, "systemd-units", "systemd unit globs to profile (repeat or comma-separate)")
	fs.StringVar(&o.BearerToken, "bearer-token", "", "token for --remote-store-address (standalone mode)")
	fs.StringVar(&o.RemoteStoreAddress, "remote-store-address", "", "Parca-compatible store (standalone mode), host:port")
	fs.IntVar(&o.FrequencyHz, "profiling-cpu-sampling-frequency", 19, "samples per second per CPU")
	fs.DurationVar(&o.Duration, "profiling-duration", 10*time.Second, "profile window")
	fs.StringVar(&o.HTTPAddress, "http-address", "127.0.0.1:7071", "address for /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&o.FleetAddress, "fleet-address", "", "fleet URL (https://host:port, or http:// with --insecure)")
	fs.StringVar(&o.BootstrapToken, "bootstrap-token", "", "bootstrap (enroll) token; needed only until enrolled")
	fs.StringVar(&tokenFile, "bootstrap-token-file", "", "file holding the bootstrap token")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/fleetprof-agent", "where the agent keeps its id, credential and spool")
	fs.StringVar(&o.TLSCAFile, "tls-ca-file", "", "CA bundle to verify the fleet (default: system roots)")
	fs.StringVar(&labels, "labels", "", "custom agent labels k=v,... (used by rollout selectors)")
	fs.StringVar(&o.Cluster, "cluster", os.Getenv("FLEETPROF_CLUSTER"), "cluster name label")
	fs.StringVar(&o.Platform, "platform", "", "kubernetes, systemd or host (default: detected)")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if showVersion {
		fmt.Fprintln(stdout, "fleetprof-agent", version.Version)
		return nil
	}
	applyMemoryPolicy(fs, gcPercent, memoryLimitMiB)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o.SystemdUnits = units
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("read --bootstrap-token-file: %w", err)
		}
		o.BootstrapToken = strings.TrimSpace(string(b))
	}
	if labels != "" {
		o.Labels = map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return fmt.Errorf("--labels: %q is not k=v", kv)
			}
			o.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(stderr), lvl))
	defer log.Sync()
	o.Logger = log
	a, err := agent.New(o)
	if err != nil {
		return err
	}
	log.Info("fleetprof-agent starting", zap.String("version", version.Version), zap.String("node", o.Node))
	return a.Run(ctx)
}
