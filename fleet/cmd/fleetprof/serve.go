package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fleetprof/fleetprof/fleet/server"
)

func newLogger(level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--log-level: %v", err)}
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(w), lvl)
	return zap.New(core), nil
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var o server.Options
	var level string
	fs.StringVar(&o.DataDir, "data-dir", "", "directory for keys, the embedded store and profiles (required)")
	fs.StringVar(&o.HTTPAddress, "http-address", "127.0.0.1:8080", "address for the console, API, OpAMP and ingest")
	fs.StringVar(&o.TLSCertFile, "tls-cert-file", "", "TLS certificate (PEM); enables HTTPS, wss and HTTP/2")
	fs.StringVar(&o.TLSKeyFile, "tls-key-file", "", "TLS private key (PEM)")
	fs.StringVar(&o.PublicURL, "public-url", "", "URL agents use to reach this fleet (default: from the listen address)")
	fs.DurationVar(&o.CredentialTTL, "agent-credential-ttl", 24*time.Hour, "lifetime of agent credentials (rotated at 2/3)")
	fs.IntVar(&o.MaxConnections, "max-agents", 0, "most OpAMP agents held at once (0: 19000)")
	fs.Float64Var(&o.RotationRate, "rotation-rate", 100, "bulk credential rotation pace, offers per second")
	fs.DurationVar(&o.ProfileRetention, "profile-retention", 15*24*time.Hour, "how long profiles are kept")
	fs.Int64Var(&o.ProfileMaxBytes, "profile-max-bytes", 0, "cap on stored profile bytes, oldest dropped first (0: none)")
	fs.StringVar(&o.AgentBinary, "agent-binary", "", "fleetprof-agent served at /download/fleetprof-agent for install.sh (default: beside this binary)")
	fs.StringVar(&o.Store, "store", "sqlite", "fleet store: sqlite (in --data-dir) or postgres (--postgres-dsn, shared by replicas)")
	fs.StringVar(&o.PostgresDSN, "postgres-dsn", "", "PostgreSQL connection string for --store postgres")
	fs.StringVar(&o.ProfileS3.Endpoint, "profiles-s3-endpoint", "", "S3-compatible object store (host:port) for profile blobs; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (default: blobs in --data-dir)")
	fs.StringVar(&o.ProfileS3.Bucket, "profiles-s3-bucket", "", "bucket for profile blobs (must exist)")
	fs.StringVar(&o.ProfileS3.Prefix, "profiles-s3-prefix", "", "key prefix in the bucket: with --store postgres the same for every replica (they share the profile index), with sqlite one per replica")
	fs.StringVar(&o.ProfileS3.Region, "profiles-s3-region", "", "bucket region (default: discovered)")
	fs.BoolVar(&o.ProfileS3.Insecure, "profiles-s3-insecure", false, "talk plain HTTP to the object store")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("serve: unexpected argument %q", pos[0])}
	}
	if o.DataDir == "" {
		return usageError{"serve: --data-dir is required"}
	}
	if (o.ProfileS3.Endpoint == "") != (o.ProfileS3.Bucket == "") {
		return usageError{"serve: --profiles-s3-endpoint and --profiles-s3-bucket go together"}
	}
	if o.ProfileS3.Endpoint != "" {
		// Credentials only from the environment: no secrets in ps.
		o.ProfileS3.AccessKeyID, o.ProfileS3.SecretAccessKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	}
	log, err := newLogger(level, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	o.Logger = log
	return server.Run(ctx, o)
}
