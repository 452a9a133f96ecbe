package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
)

// siteFlags select the configuration server and the admin identity.
func siteFlags() []cli.Flag {
	f := adminFlags()
	f[0] = &cli.StringFlag{Name: "server", Value: "https://127.0.0.1:9440", Usage: "`URL` of the configuration server"}
	return f
}

// siteCall is a configuration server request for a command: 400 answers
// (a value out of range) exit 2, other refusals exit 1.
func siteCall(c *cli.Context, method, path string, in, out any) error {
	client, base, err := adminClient(c)
	if err != nil {
		return err
	}
	err = control.Call(c.Context, client, method, base+path, in, out)
	var ce *control.CallError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce) && ce.Status == http.StatusBadRequest:
		return usageError("%v", err)
	default:
		return failure("%v", err)
	}
}

// siteList is an admin command that lists what GET path answers on the
// configuration server: no arguments, the answer in out, printed as JSON
// with --output json (done is then true), else left to the caller. check,
// if not nil, validates the flags first.
func siteList(c *cli.Context, path func() (string, error), out any) (done bool, err error) {
	format, err := outputFormat(c)
	if err != nil {
		return false, err
	}
	if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
		return false, err
	}
	p, err := path()
	if err != nil {
		return false, err
	}
	if err := siteCall(c, http.MethodGet, p, nil, out); err != nil {
		return false, err
	}
	if format == "json" {
		return true, printJSON(c.App.Writer, out)
	}
	return false, nil
}

// fixed is a siteList path without flags to check.
func fixed(p string) func() (string, error) { return func() (string, error) { return p, nil } }

func machineCommand() *cli.Command {
	return &cli.Command{
		Name:  "machine",
		Usage: "list and remove the machines registered with the configuration server",
		Subcommands: []*cli.Command{
			{
				Name:         "list",
				Usage:        "list the registered machines, their last heartbeat and health",
				Flags:        append(siteFlags(), outputFlag()),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					var ms []control.MachineView
					if done, err := siteList(c, fixed("/machines"), &ms); done || err != nil {
						return err
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "MACHINE\tHEALTH\tITEMS\tLAST HEARTBEAT\tCERTIFICATE EXPIRES\tREGISTERED FROM")
					for _, m := range ms {
						last := "never"
						if m.LastHeartbeat != nil {
							last = fmt.Sprintf("%s ago", time.Since(*m.LastHeartbeat).Round(time.Second))
						}
						fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", m.Name, m.Health, m.Items, last, m.CertExpires.Format(time.DateOnly), m.Address)
					}
					return tw.Flush()
				},
			},
			{
				Name:  "remove",
				Usage: "remove a machine: unprotect its volumes and revoke its certificate on every port",
				Description: "The machine's certificate is revoked (the site's CRL): the configuration server and every process\n" +
					"server refuse it at once. Its replicas and recovery points stay on the target.\n\n" +
					"Example:\n   lifeboat machine remove web01 --data-dir /var/lib/lifeboat/server",
				ArgsUsage:    "MACHINE",
				Flags:        append(siteFlags(), outputFlag()),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					format, err := outputFormat(c)
					if err != nil {
						return err
					}
					args, err := leafArgs(c, 1, "the machine's name")
					if err != nil {
						return err
					}
					var out control.RemovedMachine
					if err := siteCall(c, http.MethodDelete, "/machines/"+url.PathEscape(args[0]), nil, &out); err != nil {
						return err
					}
					if format == "json" {
						return printJSON(c.App.Writer, out)
					}
					fmt.Fprintf(c.App.Writer, "removed %s: %d certificate(s) revoked, unprotected %v\n", args[0], len(out.Revoked), out.Unprotected)
					return nil
				},
			},
		},
		Action: unknownCommand,
	}
}

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "list the site's events: what went wrong, when it cleared, and what to do",
		Description: "Each event has a stable code (scripts match on it), a severity and one line of advice. A condition's\n" +
			"event is raised when it starts and cleared when it ends.\n\n" +
			"Examples:\n   lifeboat events --since 1h\n   lifeboat events --since 2026-12-01T00:00:00Z --output json",
		Flags: append(siteFlags(), outputFlag(),
			&cli.StringFlag{Name: "since", Usage: "only events raised or cleared since `WHEN`: a duration back from now (1h) or an RFC 3339 time"}),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			path := func() (string, error) {
				s := c.String("since")
				if s == "" {
					return "/events", nil
				}
				t, err := parseSince(s, time.Now())
				return "/events?since=" + url.QueryEscape(t.UTC().Format(time.RFC3339Nano)), err
			}
			var es []control.Event
			if done, err := siteList(c, path, &es); done || err != nil {
				return err
			}
			printEvents(c.App.Writer, es)
			return nil
		},
	}
}

// parseSince reads --since: a duration before now or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, usageError("--since %q: want a duration (30m, 24h) or an RFC 3339 time (2026-12-01T08:00:00Z)", s)
}

func printEvents(w io.Writer, es []control.Event) {
	if len(es) == 0 {
		fmt.Fprintln(w, "no events")
		return
	}
	for _, e := range es {
		state := "OPEN"
		if e.Cleared != nil {
			state = "cleared " + e.Cleared.Local().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%s %s %-8s %s: %s (%s)\n    advice: %s\n", e.Raised.Local().Format(time.DateTime), e.Code, e.Severity,
			e.Subject, e.Message, state, e.Advice)
	}
}

// siteStatus prints the configuration server's status of the site.
func siteStatus(c *cli.Context, format string) error {
	var st control.SiteStatus
	if err := siteCall(c, http.MethodGet, "/status", nil, &st); err != nil {
		return err
	}
	if format == "json" {
		return printJSON(c.App.Writer, st)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "site health: %s\n", st.Health)
	if len(st.Items) == 0 {
		fmt.Fprintln(w, "nothing protected yet: lifeboat protect --machine M --volume NAME=PATH --policy P")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ITEM\tSTATE\tRPO\tLATEST POINT\tHEALTH\tPOLICY")
	for _, it := range st.Items {
		state := it.State
		if it.Progress != nil {
			state = fmt.Sprintf("%s %.0f%%", state, *it.Progress)
		}
		rpo := "-"
		if it.RPOSeconds != nil {
			rpo = fmt.Sprintf("%.1fs", *it.RPOSeconds)
		}
		point := "none yet"
		if it.LatestPoint != nil {
			point = fmt.Sprintf("#%d %s", it.LatestPoint.Seq, it.LatestPoint.Time.Local().Format(time.DateTime))
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\n", it.Machine, it.Volume, state, rpo, point, it.Health, it.Policy)
	}
	tw.Flush()
	for _, it := range st.Items {
		for _, r := range it.Reasons {
			fmt.Fprintf(w, "  %s/%s: %s\n", it.Machine, it.Volume, r)
		}
	}
	if len(st.ProcessServers) > 1 { // the site's own alone says nothing new
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "\nPROCESS SERVER\tURL\tITEMS\tCHURN\tSPOOL\tHEALTH")
		for _, ps := range st.ProcessServers {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s/s\t%s\t%s\n", ps.Name, ps.URL, ps.Items, humanBytes(uint64(ps.ChurnBps)),
				humanBytes(uint64(ps.SpoolBytes)), ps.Health)
		}
		tw.Flush()
		for _, ps := range st.ProcessServers {
			if ps.Reason != "" {
				fmt.Fprintf(w, "  %s: %s\n", ps.Name, ps.Reason)
			}
		}
	}
	return nil
}

// itemFlags name a protected item.
func itemFlags() []cli.Flag {
	return append(siteFlags(),
		&cli.StringFlag{Name: "machine", Required: true, Usage: "the registered `MACHINE`"},
		&cli.StringFlag{Name: "volume", Required: true, Usage: "the volume's `NAME` on that machine"})
}

func itemPath(c *cli.Context) string {
	return "/items/" + url.PathEscape(c.String("machine")) + "/" + url.PathEscape(c.String("volume"))
}

// itemCommand is unprotect, pause, resume or resync.
func itemCommand(name, usage, description string, extra []cli.Flag, call func(c *cli.Context) (method, path string, body any)) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, Description: description,
		Flags:        append(itemFlags(), extra...),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments (--machine and --volume name the item)"); err != nil {
				return err
			}
			method, path, body := call(c)
			var it control.Item
			if err := siteCall(c, method, path, body, &it); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "%s: %s done; the agent acts on it at its next heartbeat\n", it.Key(), name)
			return nil
		},
	}
}

func protectionCommands() []*cli.Command {
	protect := &cli.Command{
		Name:  "protect",
		Usage: "protect a volume of a registered machine with a policy",
		Description: "The machine's agent receives the volume at its next heartbeat, serves it over NBD (and FUSE) and\n" +
			"replicates it: first a copy of the whole volume (the initial replication), then every write.\n" +
			"--wait shows the initial replication's progress until the first recovery point.\n\n" +
			"Examples:\n" +
			"   lifeboat protect --machine web01 --volume db=/dev/sdb --policy gold --wait\n" +
			"   lifeboat protect --machine web01 --volume scratch=/srv/scratch.img,size=10GiB --policy gold",
		Flags: append(siteFlags(),
			&cli.StringFlag{Name: "machine", Required: true, Usage: "the registered `MACHINE`"},
			&cli.StringFlag{Name: "volume", Required: true, Usage: "`NAME=PATH[,size=SIZE]` on that machine; size= creates a sparse file"},
			&cli.StringFlag{Name: "policy", Required: true, Usage: "the `POLICY` (lifeboat policy create)"},
			&cli.StringFlag{Name: "process-server", Usage: "`PS` the agent ships to: a registered process server's name, site (lifeboat server's own), or a URL;\n" +
				"\tdefault: the least loaded process server that is up"},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the first recovery point, showing the initial replication's progress"},
			&cli.DurationFlag{Name: "timeout", Value: 24 * time.Hour, Usage: "with --wait, give up after this `LONG`"},
		),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
				return err
			}
			spec, err := parseVolumeSpec(c.String("volume"))
			if err != nil {
				return usageError("%v", err)
			}
			if spec.ReadOnly {
				return usageError("--volume %s: ro is for the agent's own --volume; a protected volume is written", c.String("volume"))
			}
			req := control.ProtectRequest{Machine: c.String("machine"), Volume: spec.Name, Path: spec.Path, Size: spec.Size,
				Policy: c.String("policy"), ProcessServer: c.String("process-server")}
			var it control.Item
			if err := siteCall(c, http.MethodPost, "/items", req, &it); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "protecting %s (%s) with policy %s, shipping to %s\n", it.Key(), it.Path, it.Policy, it.ProcessServer)
			if !c.Bool("wait") {
				return nil
			}
			return waitProtected(c, it.Key(), c.Duration("timeout"))
		},
	}
	return []*cli.Command{
		protect,
		itemCommand("unprotect", "stop protecting a volume (its replica and points stay on the site)",
			"The agent stops shipping the volume and stops serving it; its journal directory stays on the machine.", nil,
			func(c *cli.Context) (string, string, any) { return http.MethodDelete, itemPath(c), nil }),
		itemCommand("pause", "pause a volume's replication (writes are still journaled and tracked)",
			"While paused the journal grows up to the agent's --journal-quota, then only dirty regions are tracked.", nil,
			func(c *cli.Context) (string, string, any) { return http.MethodPost, itemPath(c) + "/pause", nil }),
		itemCommand("resume", "resume a paused volume's replication", "", nil,
			func(c *cli.Context) (string, string, any) { return http.MethodPost, itemPath(c) + "/resume", nil }),
		itemCommand("resync", "copy a volume's dirty regions again (or, with --full, all of it) in a new generation",
			"Without --full the agent copies the regions its dirty bitmap holds (what the site has not confirmed), with\n"+
				"--full every region of the volume; its unshipped journal is dropped, as those regions cover it.",
			[]cli.Flag{&cli.BoolFlag{Name: "full", Usage: "copy every region, not only the dirty ones"}},
			func(c *cli.Context) (string, string, any) {
				return http.MethodPost, itemPath(c) + "/resync", control.ResyncRequest{Full: c.Bool("full")}
			}),
	}
}

// waitProtected polls the site's status until the item has a recovery
// point, printing the initial replication's progress.
func waitProtected(c *cli.Context, key string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	bar := newProgress(c.App.Writer, "initial replication of "+key)
	defer bar.Finish()
	for {
		var st control.SiteStatus
		if err := siteCall(c, http.MethodGet, "/status", nil, &st); err != nil {
			return err
		}
		for _, it := range st.Items {
			if it.Machine+"/"+it.Volume != key {
				continue
			}
			if it.LatestPoint != nil && it.State != control.StateInitial {
				bar.Set(100, control.StateProtected, "")
				bar.Finish()
				fmt.Fprintf(c.App.Writer, "%s is %s: latest recovery point #%d\n", key, strings.ToLower(string(it.Health)), it.LatestPoint.Seq)
				return nil
			}
			pct := 0.0
			if it.Progress != nil {
				pct = *it.Progress
			}
			bar.Set(pct, it.State, strings.Join(it.Reasons, "; "))
		}
		if time.Now().After(deadline) {
			return failure("%s has no recovery point after %v", key, timeout)
		}
		select {
		case <-c.Context.Done():
			return c.Context.Err()
		case <-time.After(time.Second):
		}
	}
}
