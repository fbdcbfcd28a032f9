package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetprof/fleetprof/fleet/client"
	"github.com/fleetprof/fleetprof/fleet/console"
)

// adminFlags are shared by every admin command.
type adminFlags struct {
	server string
	output string
}

func (a *adminFlags) register(fs *flag.FlagSet) {
	a.registerServer(fs)
	fs.StringVar(&a.output, "o", "table", "output: table or json")
	fs.StringVar(&a.output, "output", "table", "output: table or json")
}

func (a *adminFlags) registerServer(fs *flag.FlagSet) {
	def := os.Getenv("FLEETPROF_SERVER")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	fs.StringVar(&a.server, "server", def, "fleet URL")
}

func (a *adminFlags) client() (*client.Client, error) {
	tok := strings.TrimSpace(os.Getenv("FLEETPROF_ADMIN_TOKEN"))
	if tok == "" {
		return nil, usageError{"FLEETPROF_ADMIN_TOKEN is not set (the fleet wrote one to DATA_DIR/admin-token on first start)"}
	}
	return client.New(a.server, tok, nil), nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func projectCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"project: want create NAME or list"}
	}
	fs := flag.NewFlagSet("project "+args[0], flag.ContinueOnError)
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
	switch args[0] {
	case "create":
		if len(pos) != 1 {
			return usageError{"project create: want exactly one NAME"}
		}
		p, err := c.CreateProject(ctx, pos[0])
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, p)
		}
		fmt.Fprintln(stdout, p.ID)
		return nil
	case "list":
		ps, err := c.ListProjects(ctx)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, ps)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tCREATED")
		for _, p := range ps {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", p.ID, p.Name, p.CreatedAt.Format(time.RFC3339))
		}
		return tw.Flush()
	}
	return usageError{fmt.Sprintf("project: unknown subcommand %q", args[0])}
}

func parseLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Sprintf("--labels: %q is not k=v", kv)}
		}
		out[k] = v
	}
	return out, nil
}

func tokenCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"token: want create, list or delete"}
	}
	fs := flag.NewFlagSet("token "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	project := fs.String("project", "", "project id (required)")
	name := fs.String("name", "", "token name")
	scope := fs.String("scope", "write-profiles", "enroll or write-profiles")
	ttl := fs.String("ttl", "", "lifetime, e.g. 24h or 30d (default: until deleted)")
	labels := fs.String("labels", "", "labels for agents enrolled with it: k=v,...")
	maxUses := fs.Int("max-uses", 0, "enrollments allowed (0: unlimited)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if *project == "" {
		return usageError{"token: --project is required"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	switch args[0] {
	case "create":
		if *name == "" {
			return usageError{"token create: --name is required"}
		}
		l, err := parseLabels(*labels)
		if err != nil {
			return err
		}
		t, err := c.CreateToken(ctx, *project, console.CreateTokenRequest{Name: *name, Scope: *scope, TTL: *ttl, Labels: l, MaxUses: *maxUses})
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, t)
		}
		fmt.Fprintln(stdout, t.Token)
		return nil
	case "list":
		ts, err := c.ListTokens(ctx, *project)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, ts)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tKIND\tCREATED\tEXPIRES\tLAST USED\tUSES\tREVOKED")
		for _, t := range ts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", t.ID, t.Name, t.Kind, t.CreatedAt.Format(time.RFC3339), fmtTime(t.ExpiresAt), fmtTime(t.LastUsedAt), t.Uses, fmtTime(t.RevokedAt))
		}
		return tw.Flush()
	case "delete":
		if len(pos) != 1 {
			return usageError{"token delete: want exactly one TOKEN_ID"}
		}
		if err := c.DeleteToken(ctx, *project, pos[0]); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "revoked", pos[0])
		return nil
	}
	return usageError{fmt.Sprintf("token: unknown subcommand %q", args[0])}
}

func agentsCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"agents: want list, rotate-credentials or revoke"}
	}
	if args[0] == "versions" {
		return agentVersionsCmd(ctx, args[1:], stdout)
	}
	fs := flag.NewFlagSet("agents "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	project := fs.String("project", "", "project id")
	sel := fs.String("selector", "", "label selector, e.g. platform=systemd,cluster in (a,b)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	switch args[0] {
	case "list":
		as, err := c.ListAgents(ctx, *project, *sel)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, as)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tHOST\tPLATFORM\tVERSION\tSTATE\tLAST SEEN\tCREDENTIAL EXPIRES\tLABELS")
		for _, a := range as {
			keys := make([]string, 0, len(a.Labels))
			for k := range a.Labels {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var l []string
			for _, k := range keys {
				l = append(l, k+"="+a.Labels[k])
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Hostname, a.Platform, a.Version, console.AgentState(a), a.LastSeen.Format(time.RFC3339), fmtTime(a.CredentialExpiresAt), strings.Join(l, ","))
		}
		return tw.Flush()
	case "rotate-credentials":
		if *project == "" {
			return usageError{"agents rotate-credentials: --project is required"}
		}
		r, err := c.RotateCredentials(ctx, *project, *sel)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "selected %d, rotation started for %d, failed %d\n", r.Selected, r.Started, len(r.Failed))
		for _, f := range r.Failed {
			fmt.Fprintln(stdout, "  failed:", f)
		}
		return nil
	case "rotation-status":
		if *project == "" {
			return usageError{"agents rotation-status: --project is required"}
		}
		var st console.RotationStatus
		q := url.Values{"selector": {*sel}}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(*project)+"/agents/rotation?"+q.Encode(), nil, &st); err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, st)
		}
		fmt.Fprintf(stdout, "selected %d: rotated %d, pending %d, failed %d\n", st.Selected, st.Rotated, st.Pending, st.Failed)
		for id, e := range st.Errors {
			fmt.Fprintf(stdout, "  %s: %s\n", id, e)
		}
		return nil
	case "revoke":
		if *project == "" || len(pos) != 1 {
			return usageError{"agents revoke: want --project ID AGENT_ID"}
		}
		if err := c.RevokeAgent(ctx, *project, pos[0]); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "revoked", pos[0])
		return nil
	}
	return usageError{fmt.Sprintf("agents: unknown subcommand %q", args[0])}
}

func auditCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	project := fs.String("project", "", "project id (default: all)")
	limit := fs.Int("limit", 100, "entries")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	es, err := c.Audit(ctx, *project, *limit)
	if err != nil {
		return err
	}
	if af.output == "json" {
		return printJSON(stdout, es)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tTARGET\tRESULT")
	for _, e := range es {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Format(time.RFC3339), e.Actor, e.Action, e.Target, e.Result)
	}
	return tw.Flush()
}
