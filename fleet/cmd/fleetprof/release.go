package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/fleetprof/fleetprof/fleet/console"
	"github.com/fleetprof/fleetprof/fleet/release"
)

func init() {
	extraCommands["release"] = releaseCmd
	extraCommands["releases"] = releaseCmd
}

// releaseCmd: upload, register, list, rollout, status, pause, resume,
// rollback.
func releaseCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"release: want upload, register, list, rollout, status, pause, resume or rollback"}
	}
	fs := flag.NewFlagSet("release "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	version := fs.String("version", "", "release version, e.g. v1.2.0")
	urlFlag := fs.String("url", "", "download URL (release register)")
	project := fs.String("project", "", "project id")
	sel := fs.String("selector", "", "label selector of the target agents, e.g. platform=systemd")
	canary := fs.Int("canary", 0, "agents in the canary stage (0: none)")
	wave := fs.String("wave", "", "share of the targets per wave, in percent; default one wave")
	waveCount := fs.Int("wave-count", 0, "agents per wave (instead of --wave)")
	pause := fs.Duration("wave-pause", 0, "pause between stages, e.g. 30s")
	maxFail := fs.String("max-failure", "0", "percent of a stage's agents that may fail before the rollout halts")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	out := func(v any, line string) error {
		if af.output == "json" {
			return printJSON(stdout, v)
		}
		_, err := fmt.Fprintln(stdout, line)
		return err
	}
	switch args[0] {
	case "upload":
		if len(pos) != 1 || *version == "" {
			return usageError{"release upload FILE --version V"}
		}
		f, err := os.Open(pos[0])
		if err != nil {
			return fmt.Errorf("open release: %w", err)
		}
		defer f.Close()
		rel, err := c.UploadRelease(ctx, *version, f)
		if err != nil {
			return err
		}
		return out(rel, rel.Version+" sha256:"+rel.SHA256)
	case "register":
		if *version == "" || *urlFlag == "" {
			return usageError{"release register --version V --url URL"}
		}
		rel, err := c.RegisterRelease(ctx, console.RegisterReleaseRequest{Version: *version, URL: *urlFlag})
		if err != nil {
			return err
		}
		return out(rel, rel.Version+" sha256:"+rel.SHA256)
	case "list":
		rs, err := c.ListReleases(ctx)
		if err != nil {
			return err
		}
		if af.output == "json" {
			return printJSON(stdout, rs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tSIZE\tSHA256\tCREATED")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", r.Version, r.Size, r.SHA256, r.CreatedAt.Format("2006-01-02 15:04:05"))
		}
		return tw.Flush()
	case "rollout":
		if *project == "" || *version == "" {
			return usageError{"release rollout --project ID --version V --selector S [--canary N] [--wave PCT] [--max-failure PCT]"}
		}
		wp, err := parsePercent("wave", *wave)
		if err != nil {
			return err
		}
		mf, err := parsePercent("max-failure", *maxFail)
		if err != nil {
			return err
		}
		req := console.ReleaseRolloutRequest{Version: *version, Selector: *sel, Canary: *canary, WavePercent: wp, WaveCount: *waveCount, MaxFailurePercent: mf}
		if *pause > 0 {
			req.WavePause = pause.String()
		}
		st, err := c.StartReleaseRollout(ctx, *project, req)
		if err != nil {
			return err
		}
		return out(st, st.ID)
	case "status", "pause", "resume", "rollback":
		if *project == "" || len(pos) != 1 {
			return usageError{"release " + args[0] + " --project ID ROLLOUT_ID"}
		}
		var st *release.Status
		if args[0] == "status" {
			st, err = c.ReleaseRollout(ctx, *project, pos[0])
		} else {
			st, err = c.ReleaseRolloutAction(ctx, *project, pos[0], args[0])
		}
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %s %s stage=%s targets=%d counts=%v", st.ID, st.Version, st.Status, st.StageName, st.Targets, st.Counts)
		if st.Reason != "" {
			line += "\nreason: " + st.Reason
		}
		return out(st, line)
	}
	return usageError{fmt.Sprintf("release: unknown subcommand %q", args[0])}
}

// agentVersionsCmd is `agents versions --project P`: agents per version
// and platform.
func agentVersionsCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("agents versions", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	project := fs.String("project", "", "project id")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *project == "" {
		return usageError{"agents versions: --project is required"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	inv, err := c.Versions(ctx, *project)
	if err != nil {
		return err
	}
	if af.output == "json" {
		return printJSON(stdout, inv)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tPLATFORM\tMANAGED BY\tCLUSTER\tIMAGE\tAGENTS\tCONNECTED")
	for _, v := range inv.Versions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", v.Version, v.Platform, v.ManagedBy, v.Cluster, v.Image, v.Agents, v.Connected)
	}
	return tw.Flush()
}
