package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/failover"
	"lifeboat/pipeline"
)

// pointFlags choose a recovery point: --point or --at.
func pointFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "point", Usage: "`P`: latest (apply everything the site has spooled first, then the newest point; the default),\n" +
			"\tlatest-processed (the newest point already applied, no wait), or a point's seq (lifeboat points list)"},
		&cli.TimestampFlag{Name: "at", Layout: time.RFC3339, Usage: "`TIME` (RFC 3339, e.g. 2026-12-03T14:00:00Z): the newest point at or before it, instead of --point"},
	}
}

// recoveryRequest reads --point and --at.
func recoveryRequest(c *cli.Context) (failover.Request, error) {
	req := failover.Request{Point: c.String("point")}
	if t := c.Timestamp("at"); t != nil {
		if req.Point != "" {
			return req, usageError("give --point or --at, not both")
		}
		at := *t
		req.At = &at
	}
	return req, nil
}

func testFailoverCommand() *cli.Command {
	return &cli.Command{
		Name:  "test-failover",
		Usage: "check a recovery point without touching replication: serve it as a writable scratch volume",
		Description: "A test failover serves a recovery point as a volume that can be attached and written (NBD from the\n" +
			"site's --recovery-nbd address, a file in its --fuse-mount for a loop device). Its writes stay in an\n" +
			"overlay on the site's disk: replication of the volume goes on, no write reaches the replica or a\n" +
			"point, and retention keeps the point until cleanup. Opening takes constant time: nothing is copied.\n\n" +
			"Examples:\n" +
			"   lifeboat test-failover start web01/db --data-dir /var/lib/lifeboat/server\n" +
			"   qemu-img compare nbd://127.0.0.1:10810/web01.db.test db-known-good.img\n" +
			"   lifeboat test-failover list --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat test-failover cleanup web01/db --data-dir /var/lib/lifeboat/server",
		Action: unknownCommand,
		Subcommands: []*cli.Command{
			{
				Name: "start", Usage: "serve a point of VOLUME as a test volume", ArgsUsage: "VOLUME",
				Flags:        append(append(adminFlags(), pointFlags()...), outputFlag()),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					return recoveryAction(c, http.MethodPost, "/test-failover", true, "test failover of %s started")
				},
			},
			{
				Name: "list", Usage: "list the site's test failovers and failovers",
				Flags:        append(adminFlags(), outputFlag()),
				OnUsageError: onUsageError,
				Action:       recoveryList,
			},
			{
				Name: "cleanup", Usage: "end the test failover of VOLUME: its export, file and overlay are removed", ArgsUsage: "VOLUME",
				Flags:        append(adminFlags(), outputFlag()),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					return recoveryAction(c, http.MethodDelete, "/test-failover", false, "test failover of %s cleaned up")
				},
			},
		},
	}
}

func failoverCommand() *cli.Command {
	return &cli.Command{
		Name:  "failover",
		Usage: "fail a volume over to the recovery site: serve a recovery point as the volume from now on",
		Description: "Failover stops taking the volume's writes at the site (its agent, when alive, is told, stops shipping\n" +
			"and keeps tracking its changes for the failback) and serves the chosen point as the failover volume,\n" +
			"whose writes are journaled and dirty-tracked so that a failback sends back only what changed. Until\n" +
			"commit, change-point moves it to another point. --planned, with the source alive, asks its agent to\n" +
			"stop writes, flush and ship everything first: no write the source acknowledged is lost.\n\n" +
			"Examples:\n" +
			"   lifeboat failover start web01/db --point latest --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat failover change-point web01/db --at 2026-12-03T13:55:00Z --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat failover commit web01/db --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat failover start web01/db --planned --timeout 2m --data-dir /var/lib/lifeboat/server",
		Action: unknownCommand,
		Subcommands: []*cli.Command{
			{
				Name: "start", Usage: "fail VOLUME over to a recovery point", ArgsUsage: "VOLUME",
				Flags: append(append(adminFlags(), pointFlags()...), outputFlag(),
					&cli.BoolFlag{Name: "planned", Usage: "the source is alive: its agent stops writes, flushes and ships everything first (no --point)"},
					&cli.DurationFlag{Name: "timeout", Value: failover.DefaultPlannedTimeout, Usage: "with --planned: give up (changing nothing) after `D`"},
					azureDiskFlag()),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					return recoveryAction(c, http.MethodPost, "/failover", true, "%s failed over")
				},
			},
			{
				Name: "change-point", Usage: "move the uncommitted failover of VOLUME to another point", ArgsUsage: "VOLUME",
				Flags: append(append(adminFlags(), pointFlags()...), outputFlag(),
					&cli.BoolFlag{Name: "force", Usage: "drop the writes made to the failover volume since it started"},
					azureDiskFlag()),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					return recoveryAction(c, http.MethodPost, "/failover/point", true, "failover of %s moved")
				},
			},
			{
				Name: "commit", Usage: "make the failover of VOLUME final: its point can no longer change", ArgsUsage: "VOLUME",
				Flags:        append(adminFlags(), outputFlag()),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					return recoveryAction(c, http.MethodPost, "/failover/commit", false, "failover of %s committed")
				},
			},
		},
	}
}

// azureDiskFlag asks for a copy of the failover point that Azure can turn
// into a managed disk.
func azureDiskFlag() cli.Flag {
	return &cli.BoolFlag{Name: "azure-disk", Usage: "azure:// targets: also copy the point to a page blob (a fixed VHD, in plaintext even when\n" +
		"\tthe replica is encrypted) under PREFIX failover/ that Azure can turn into a managed disk"}
}

// recoveryAction sends one recovery request for the VOLUME argument and
// prints the recovery volume it answers.
func recoveryAction(c *cli.Context, method, path string, withBody bool, done string) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	args, err := leafArgs(c, 1, "one VOLUME (MACHINE/NAME, an id, or a NAME only one machine has)")
	if err != nil {
		return err
	}
	var req *failover.Request
	if withBody {
		r, err := recoveryRequest(c)
		if err != nil {
			return err
		}
		if c.Bool("planned") {
			if r.Point != "" || r.At != nil {
				return usageError("--planned fails over to the agent's last write: drop --point and --at")
			}
			r.Planned, r.Timeout = true, c.Duration("timeout")
		} else if c.IsSet("timeout") {
			return usageError("--timeout applies to --planned only")
		}
		r.Force, r.AzureDisk = c.Bool("force"), c.Bool("azure-disk")
		req = &r
	}
	return sendRecovery(c, format, args[0], method, path, req, done)
}

// sendRecovery sends one recovery request (req nil: no body) for volume,
// showing the site's progress meanwhile, and prints the answer.
func sendRecovery(c *cli.Context, format, volume, method, path string, req *failover.Request, done string) error {
	args := []string{volume}
	client, base, err := adminClient(c)
	if err != nil {
		return err
	}
	// The answer comes when the site is done: applying a large spool or
	// copying a disk takes longer than the usual header timeout. Ctrl-C
	// ends the request, and the site undoes it.
	if tr, ok := client.Transport.(*http.Transport); ok {
		tr.ResponseHeaderTimeout = 0
	}
	volURL := base + "/volumes/" + url.PathEscape(args[0])
	start := time.Now()
	var st pipeline.RecoveryState
	job := &jobHeader{base: client.Transport}
	jobClient := *client
	jobClient.Transport = job
	call := func(ctx context.Context) error {
		var in any
		if req != nil {
			in = req
		}
		return pipeline.Call(ctx, &jobClient, method, volURL+path, in, &st)
	}
	if req != nil {
		err = withProgress(c, client, volURL, call)
	} else {
		err = call(c.Context)
	}
	if err != nil {
		return failure("%v%s", err, job.suffix())
	}
	if format == "json" {
		if job.id != "" {
			fmt.Fprintf(c.App.ErrWriter, "job %s\n", job.id) // stdout is the document
		}
		return printJSON(c.App.Writer, st)
	}
	fmt.Fprintf(c.App.Writer, done+" in %v%s\n", args[0], time.Since(start).Round(time.Millisecond), job.suffix())
	if method == http.MethodDelete {
		fmt.Fprintf(c.App.Writer, "  removed: NBD export %s, its file and its overlay (%s written at point %d)\n",
			st.Export, humanBytes(uint64(st.Written)), st.Point.Seq)
		return nil
	}
	printRecovery(c, st)
	return nil
}

// withProgress runs call while showing what the site does for it when
// that takes long (applying the spool for latest, copying an Azure disk,
// waiting for the agent of a planned failover): the volume's recovery
// step, read every second, on one redrawn line on a terminal and as plain
// lines otherwise.
func withProgress(c *cli.Context, client *http.Client, volURL string, call func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- call(c.Context) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tty := false
	if f, ok := c.App.ErrWriter.(*os.File); ok {
		fi, err := f.Stat()
		tty = err == nil && fi.Mode()&os.ModeCharDevice != 0
	}
	shown, last := false, ""
	for {
		select {
		case err := <-done:
			if shown && tty {
				fmt.Fprintln(c.App.ErrWriter)
			}
			return err
		case <-tick.C:
			var v pipeline.VolumeStatus
			ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
			err := pipeline.Call(ctx, client, http.MethodGet, volURL, nil, &v)
			cancel()
			if err != nil || v.RecoveryStep == "" || v.RecoveryStep == last {
				continue
			}
			line := v.RecoveryStep
			last = line
			if tty {
				fmt.Fprintf(c.App.ErrWriter, "\r%-90s", line)
			} else {
				fmt.Fprintln(c.App.ErrWriter, line)
			}
			shown = true
		}
	}
}

// printRecovery shows a recovery volume for people.
func printRecovery(c *cli.Context, st pipeline.RecoveryState) {
	w := c.App.Writer
	fmt.Fprintf(w, "  %s of %s/%s at point %d (%s, %s)\n", st.Kind, st.Volume.Machine, st.Volume.Name, st.Point.Seq,
		st.Point.Time.UTC().Format(time.RFC3339), st.Point.Name)
	if st.URL != "" {
		fmt.Fprintf(w, "  NBD:  %s\n", st.URL)
	}
	if st.File != "" {
		fmt.Fprintf(w, "  file: %s  (losetup -f --show %s)\n", st.File, st.File)
	}
	if st.AzureDisk != "" {
		fmt.Fprintf(w, "  Azure disk (a fixed VHD page blob): %s\n", st.AzureDisk)
	}
	if st.Kind == pipeline.RecoveryFailover {
		state := "not committed: lifeboat failover commit makes it final"
		if st.Committed {
			state = "committed"
		}
		fmt.Fprintf(w, "  %s; %s written since %s\n", state, humanBytes(uint64(st.Written)), st.Since.UTC().Format(time.RFC3339))
	}
	if rp := st.Reprotect; rp != nil {
		printReprotect(w, *rp)
	}
}

// printReprotect shows a failover volume's reverse replication.
func printReprotect(w io.Writer, rp pipeline.ReprotectState) {
	mode := "only the candidates"
	switch {
	case rp.Verify:
		mode = "candidates compared by hash (--verify)"
	case rp.Full:
		mode = "every block (--full)"
	}
	fmt.Fprintf(w, "  reprotected to %s since %s: first sync of %s of candidate blocks, %s\n", rp.To,
		rp.Since.UTC().Format(time.RFC3339), humanBytes(uint64(rp.CandidateBytes)), mode)
	if rp.RolledBackBytes > 0 {
		fmt.Fprintf(w, "  %s the primary wrote and never shipped rolled back (--force)\n", humanBytes(uint64(rp.RolledBackBytes)))
	}
	if sh := rp.Shipper; sh != nil {
		rpo := "no point yet"
		if sh.RPOSeconds != nil {
			rpo = fmt.Sprintf("RPO %.1fs", *sh.RPOSeconds)
		}
		first := "first sync done"
		if sh.Tracker.Resync != "" || sh.Resync != nil {
			first = "first sync in progress"
		}
		fmt.Fprintf(w, "  %s; shipped %s (%s on the wire), acknowledged up to seq %d, %s\n", first,
			humanBytes(uint64(sh.BytesRaw)), humanBytes(uint64(sh.BytesWire)), sh.AckedSeq, rpo)
		if sh.LastError != "" {
			fmt.Fprintf(w, "  last error: %s\n", sh.LastError)
		}
	}
	if fb := rp.Failback; fb != nil {
		fmt.Fprintf(w, "  failback: tag %d; the site's point %d (generation %d); the agent goes on at seq %d\n", fb.TagSeq, fb.Seq, fb.Generation, fb.Seq+1)
	}
}

func recoveryList(c *cli.Context) error {
	var list []pipeline.RecoveryState
	format, err := adminList(c, "/recovery", &list)
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(c.App.Writer, list)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tKIND\tPOINT\tSINCE\tWRITTEN\tSTATE\tEXPORT")
	for _, st := range list {
		fmt.Fprintf(tw, "%s/%s\t%s\t%d\t%s\t%s\t%s\t%s\n", st.Volume.Machine, st.Volume.Name, st.Kind, st.Point.Seq,
			st.Since.UTC().Format(time.RFC3339), humanBytes(uint64(st.Written)), recoveryStateText(st), st.Export)
	}
	return tw.Flush()
}

func recoveryStateText(st pipeline.RecoveryState) string {
	switch {
	case st.Error != "":
		return "BROKEN: " + st.Error
	case st.Kind == pipeline.RecoveryTest:
		return "active"
	case st.Reprotect != nil:
		return "reprotecting to " + st.Reprotect.To
	case st.Committed:
		return "committed"
	}
	return "not committed"
}
