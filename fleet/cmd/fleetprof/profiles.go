package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"time"
)

func init() {
	extraCommands["profiles"] = profilesCmd
	extraCommands["profile"] = profilesCmd
}

// parseTime reads RFC 3339, or a duration back from now ("1h" → 1h ago).
func parseTime(s string, def time.Time) (time.Time, error) {
	if s == "" || s == "now" {
		return def, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, usageError{fmt.Sprintf("time %q: want RFC 3339 (2026-01-02T15:04:05Z) or a duration ago (1h)", s)}
}

func profilesCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "query" {
		return usageError{"profiles: want query"}
	}
	fs := flag.NewFlagSet("profiles query", flag.ContinueOnError)
	var af adminFlags
	af.registerServer(fs)
	fs.StringVar(&af.output, "o", "pprof", "output: pprof (gzipped, for go tool pprof), top or flamegraph (JSON)")
	fs.StringVar(&af.output, "output", "pprof", "output: pprof, top or flamegraph")
	project := fs.String("project", "", "project id (required)")
	query := fs.String("query", "{}", `label matchers, e.g. {unit="nginx.service", node="a"}`)
	from := fs.String("from", "1h", "start (RFC 3339, or a duration ago)")
	to := fs.String("to", "now", "end (RFC 3339, or a duration ago)")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *project == "" {
		return usageError{"profiles query: --project is required"}
	}
	now := time.Now()
	f, err := parseTime(*from, now.Add(-time.Hour))
	if err != nil {
		return err
	}
	t, err := parseTime(*to, now)
	if err != nil {
		return err
	}
	format := af.output
	switch format {
	case "pprof", "top", "flamegraph":
	case "json", "table":
		format = "top"
	default:
		return usageError{fmt.Sprintf("profiles query: -o %q: want pprof, top or flamegraph", af.output)}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	q := url.Values{"query": {*query}, "from": {f.UTC().Format(time.RFC3339Nano)}, "to": {t.UTC().Format(time.RFC3339Nano)}, "format": {format}}
	b, err := c.Raw(ctx, "/api/v1/projects/"+url.PathEscape(*project)+"/profiles/merge?"+q.Encode())
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}
