package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/rollout"
)

func init() {
	extraCommands["config"] = configCmd
	extraCommands["configs"] = configCmd
	extraCommands["rollout"] = rolloutCmd
	extraCommands["rollouts"] = rolloutCmd
}

// parsePercent reads "25" or "25%".
func parsePercent(name, s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(s), "%"))
	if err != nil || n < 0 || n > 100 {
		return 0, usageError{fmt.Sprintf("--%s: %q is not a percentage between 0 and 100", name, s)}
	}
	return n, nil
}

func configCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"config: want apply or list"}
	}
	fs := flag.NewFlagSet("config "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	project := fs.String("project", "", "project id")
	file := fs.String("f", "", "config YAML file (- for stdin)")
	fs.StringVar(file, "file", "", "config YAML file (- for stdin)")
	sel := fs.String("selector", "", "label selector of the target agents, e.g. platform=systemd")
	canary := fs.Int("canary", 0, "agents in the canary stage (0: none)")
	wave := fs.String("wave", "", "share of the targets per wave, in percent (e.g. 25 or 25%); default one wave")
	waveCount := fs.Int("wave-count", 0, "agents per wave (instead of --wave)")
	pause := fs.Duration("wave-pause", 0, "pause between stages, e.g. 30s")
	maxFail := fs.String("max-failure", "0", "percent of a stage's agents that may fail before the rollout halts")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("config %s: unexpected argument %q", args[0], pos[0])}
	}
	if *project == "" {
		return usageError{"config " + args[0] + ": --project is required"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	switch args[0] {
	case "apply":
		if *file == "" {
			return usageError{"config apply: -f FILE is required"}
		}
		var body []byte
		if *file == "-" {
			body, err = io.ReadAll(io.LimitReader(os.Stdin, 4<<20))
		} else {
			body, err = os.ReadFile(*file)
		}
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		wp, err := parsePercent("wave", *wave)
		if err != nil {
			return err
		}
		mf, err := parsePercent("max-failure", *maxFail)
		if err != nil {
			return err
		}
		req := console.ApplyConfigRequest{
			YAML: string(body), Selector: *sel, Canary: *canary, WavePercent: wp, WaveCount: *waveCount, MaxFailurePercent: mf,
		}
		if *pause > 0 {
			req.WavePause = pause.String()
		}
		res, err := c.ApplyConfig(ctx, *project, req)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, res)
		}
		fmt.Fprintln(stdout, res.Rollout.ID)
		return nil
	case "list":
		cs, err := c.ListConfigs(ctx, *project)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, cs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tID\tHASH\tCREATED\tBY")
		for _, cv := range cs {
			fmt.Fprintf(tw, "%d\t%s\t%.12s\t%s\t%s\n", cv.Version, cv.ID, cv.Hash, cv.CreatedAt.Format(time.RFC3339), cv.CreatedBy)
		}
		return tw.Flush()
	}
	return usageError{fmt.Sprintf("config: unknown subcommand %q (want apply or list)", args[0])}
}

func rolloutCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"rollout: want status|pause|resume|rollback ID, or list --project ID"}
	}
	fs := flag.NewFlagSet("rollout "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	project := fs.String("project", "", "project id (list)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	if args[0] == "list" {
		if *project == "" {
			return usageError{"rollout list: --project is required"}
		}
		rs, err := c.ListRollouts(ctx, *project)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, rs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATUS\tSELECTOR\tSTAGE\tCREATED")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\n", r.ID, r.Status, r.Selector, r.Stage+1, r.Stages, r.CreatedAt.Format(time.RFC3339))
		}
		return tw.Flush()
	}
	if len(pos) != 1 {
		return usageError{fmt.Sprintf("rollout %s: want exactly one rollout ID", args[0])}
	}
	var st *rollout.Status
	switch args[0] {
	case "status", "get":
		st, err = c.Rollout(ctx, pos[0])
	case "pause", "resume", "rollback":
		st, err = c.RolloutAction(ctx, pos[0], args[0])
	default:
		return usageError{fmt.Sprintf("rollout: unknown subcommand %q", args[0])}
	}
	if err != nil {
		return err
	}
	if af.output == "json" {
		return printJSON(stdout, st)
	}
	return printRollout(stdout, st)
}

func printRollout(w io.Writer, st *rollout.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "rollout\t%s\n", st.ID)
	fmt.Fprintf(tw, "status\t%s\n", st.Status)
	if st.Reason != "" {
		fmt.Fprintf(tw, "reason\t%s\n", st.Reason)
	}
	fmt.Fprintf(tw, "config\tv%d (%.12s)\n", st.ConfigVersion, st.ConfigHash)
	fmt.Fprintf(tw, "selector\t%q\n", st.Selector)
	fmt.Fprintf(tw, "stages\t%v", st.StageSizes)
	if st.StageName != "" {
		fmt.Fprintf(tw, " (at %s)", st.StageName)
	}
	fmt.Fprintln(tw)
	if st.NextStageAt != nil {
		fmt.Fprintf(tw, "next stage\t%s\n", st.NextStageAt.Format(time.RFC3339))
	}
	keys := make([]string, 0, len(st.Counts))
	for k := range st.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, st.Counts[k]))
	}
	fmt.Fprintf(tw, "agents\t%d (%s)\n", st.Targets, strings.Join(parts, " "))
	if err := tw.Flush(); err != nil {
		return err
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nAGENT\tSTAGE\tSTATE\tERROR")
	for _, a := range st.Agents {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", a.AgentID, a.Stage, a.State, a.Error)
	}
	return tw.Flush()
}
