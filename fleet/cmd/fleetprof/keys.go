package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/fleetprof/fleetprof/fleet/console"
)

func init() {
	extraCommands["admin-token"] = adminTokenCmd
	extraCommands["keys"] = keysCmd
}

// adminTokenCmd: fleetprof admin-token create --name N [--read-only]
func adminTokenCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return usageError{"admin-token: want create --name N [--read-only]"}
	}
	fs := flag.NewFlagSet("admin-token create", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	name := fs.String("name", "", "token name (required)")
	ro := fs.Bool("read-only", false, "a token that may only read")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *name == "" {
		return usageError{"admin-token create: --name is required"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var t console.CreatedToken
	if err := c.Do(ctx, http.MethodPost, "/api/v1/admin-tokens", map[string]any{"name": *name, "readOnly": *ro}, &t); err != nil {
		return err
	}
	if af.output == "json" {
		return printJSON(stdout, t)
	}
	fmt.Fprintln(stdout, t.Token)
	return nil
}

// keysCmd: fleetprof keys list | rotate | retire KID
func keysCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"keys: want list, rotate or retire KID"}
	}
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var out any
	switch args[0] {
	case "list":
		err = c.Do(ctx, http.MethodGet, "/api/v1/keys", nil, &out)
	case "rotate":
		err = c.Do(ctx, http.MethodPost, "/api/v1/keys/rotate", struct{}{}, &out)
	case "retire":
		if len(pos) != 1 {
			return usageError{"keys retire: want exactly one KID"}
		}
		err = c.Do(ctx, http.MethodPost, "/api/v1/keys/"+url.PathEscape(pos[0])+"/retire", struct{}{}, &out)
	default:
		return usageError{fmt.Sprintf("keys: unknown subcommand %q", args[0])}
	}
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}
