// Command fleetprof is the fleet server, console and admin CLI.
//
//	fleetprof serve --data-dir DIR --http-address HOST:PORT
//	fleetprof project create NAME
//	fleetprof token create|list|delete ...
//	fleetprof agents list|rotate-credentials|revoke ...
//
// Admin commands take --server URL and the admin token from
// FLEETPROF_ADMIN_TOKEN (DESIGN.md §10).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetprof/fleetprof/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "fleetprof:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "fleetprof:", err)
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

const usage = `usage: fleetprof <command> [flags]

commands:
  serve                         run the fleet server and console
  project create NAME           create a project; prints its id
  project list                  list projects
  token create|list|delete      manage API and bootstrap tokens
  agents list|rotate-credentials|rotation-status|revoke|versions
  release upload|register|list|rollout|status|pause|resume|rollback
  config apply|list             store a config version and roll it out
  rollout status|pause|resume|rollback|list
  profiles query                merged profile over a time range (pprof, top, flamegraph)
  admin-token create            another admin (or --read-only) token
  keys list|rotate|retire       the fleet's token signing keys
  audit                         show the audit log
  version                       print the version

Admin commands take --server URL (default $FLEETPROF_SERVER or
http://127.0.0.1:8080) and the admin token from $FLEETPROF_ADMIN_TOKEN.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return usageError{"no command"}
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "fleetprof", version.Version)
		return nil
	case "project", "projects":
		return projectCmd(ctx, args[1:], stdout)
	case "token", "tokens":
		return tokenCmd(ctx, args[1:], stdout)
	case "agents", "agent":
		return agentsCmd(ctx, args[1:], stdout)
	case "audit":
		return auditCmd(ctx, args[1:], stdout)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	if ext, ok := extraCommands[args[0]]; ok {
		return ext(ctx, args[1:], stdout)
	}
	fmt.Fprintln(stderr, usage)
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// extraCommands are registered by other files of this command (config,
// rollout, profiles, release) as those capabilities land.
var extraCommands = map[string]func(ctx context.Context, args []string, stdout io.Writer) error{}

// parse parses flags that may come before or after positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{fmt.Sprintf("%s: %v", fs.Name(), err)}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
