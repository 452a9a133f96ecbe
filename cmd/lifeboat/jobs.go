package main

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/failover"
)

// The site's jobs: every test failover, failover, reprotect and failback
// request, whoever sent it, as the configuration server recorded it.

func jobsCommand() *cli.Command {
	return &cli.Command{
		Name:  "jobs",
		Usage: "list the site's jobs (test failover, failover, reprotect, failback), newest first",
		Description: "Every recovery request the site runs is a job: its kind, volume, state (running, succeeded,\n" +
			"failed), current step and progress. 'lifeboat job show ID' shows one with its steps and result.\n\n" +
			"Examples:\n   lifeboat jobs --data-dir /var/lib/lifeboat/server\n   lifeboat jobs --limit 5 --output json",
		Flags: append(siteFlags(), outputFlag(),
			&cli.IntFlag{Name: "limit", Value: control.DefaultJobsLimit, Usage: "list the newest `N` jobs; 0 lists all"}),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			path := func() (string, error) {
				if c.Int("limit") < 0 {
					return "", usageError("--limit %d: want a number of jobs, 0 for all", c.Int("limit"))
				}
				return "/jobs?limit=" + strconv.Itoa(c.Int("limit")), nil
			}
			var jobs []control.Job
			if done, err := siteList(c, path, &jobs); done || err != nil {
				return err
			}
			return printJobs(c.App.Writer, jobs)
		},
	}
}

func jobCommand() *cli.Command {
	return &cli.Command{
		Name:   "job",
		Usage:  "show one of the site's jobs",
		Action: unknownCommand,
		Subcommands: []*cli.Command{{
			Name:  "show",
			Usage: "show job ID: its steps, progress and result; --follow waits for its end",
			Description: "With --follow the job's progress is shown until it ends: a bar in a terminal, plain lines\n" +
				"otherwise (on standard error); the exit code is 1 when the job failed.\n\n" +
				"Examples:\n   lifeboat job show 17 --data-dir /var/lib/lifeboat/server\n   lifeboat job show 17 --follow --output json",
			ArgsUsage: "ID",
			Flags: append(siteFlags(), outputFlag(),
				&cli.BoolFlag{Name: "follow", Usage: "show the job's progress until it ends; exit 1 if it failed"}),
			OnUsageError: onUsageError,
			Action:       jobShow,
		}},
	}
}

func jobShow(c *cli.Context) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	args, err := leafArgs(c, 1, "one job ID (lifeboat jobs lists them)")
	if err != nil {
		return err
	}
	id, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		return usageError("job ID %q: want a number (lifeboat jobs lists them)", args[0])
	}
	var j control.Job
	if err := siteCall(c, http.MethodGet, fmt.Sprintf("/jobs/%d", id), nil, &j); err != nil {
		return err
	}
	if c.Bool("follow") {
		if j, err = followJob(c, j); err != nil {
			return err
		}
	}
	if format == "json" {
		err = printJSON(c.App.Writer, j)
	} else {
		printJob(c, j)
	}
	if err == nil && c.Bool("follow") && j.State == control.JobFailed {
		return failure("job %d failed: %s", j.ID, j.Error)
	}
	return err
}

// followJob polls job j every second until it ends, showing its progress
// on standard error.
func followJob(c *cli.Context, j control.Job) (control.Job, error) {
	p := newProgress(c.App.ErrWriter, fmt.Sprintf("job %d %s %s", j.ID, j.Kind, j.Volume))
	defer p.Finish()
	pct := 0.0
	for tick := time.NewTicker(time.Second); ; {
		if j.Progress != nil {
			pct = *j.Progress
		}
		step := j.Step
		if step == "" {
			step = string(j.State)
		}
		p.Set(pct, step, "")
		if j.State != control.JobRunning {
			tick.Stop()
			return j, nil
		}
		select {
		case <-c.Context.Done():
			tick.Stop()
			return j, failure("stopped following job %d; it goes on at the site", j.ID)
		case <-tick.C:
		}
		if err := siteCall(c, http.MethodGet, fmt.Sprintf("/jobs/%d", j.ID), nil, &j); err != nil {
			tick.Stop()
			return j, err
		}
	}
}

func printJobs(w io.Writer, jobs []control.Job) error {
	if len(jobs) == 0 {
		fmt.Fprintln(w, "no jobs")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tVOLUME\tSTATE\tSTARTED\tTOOK\tSTEP OR ERROR")
	for _, j := range jobs {
		state, detail := string(j.State), j.Step
		if j.State == control.JobRunning && j.Progress != nil {
			state += fmt.Sprintf(" %.0f%%", *j.Progress)
		}
		if j.Error != "" {
			detail = j.Error
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.Volume, state,
			j.Started.Local().Format(time.DateTime), jobTook(j), shorten(detail, 80))
	}
	return tw.Flush()
}

// printJob shows a job for people.
func printJob(c *cli.Context, j control.Job) {
	w := c.App.Writer
	fmt.Fprintf(w, "job %d: %s of %s, %s\n", j.ID, j.Kind, j.Volume, j.State)
	fmt.Fprintf(w, "  requested by %s at %s, took %s\n", j.RequestedBy, j.Started.Local().Format(time.DateTime), jobTook(j))
	for _, s := range j.Steps {
		pct := ""
		if s.Progress != nil {
			pct = fmt.Sprintf(" (%.0f%%)", *s.Progress)
		}
		fmt.Fprintf(w, "  %s  %s%s\n", s.At.Local().Format(time.TimeOnly), s.Step, pct)
	}
	if j.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", j.Error)
	}
	if j.Result != nil {
		printRecovery(c, *j.Result)
	}
}

// jobTook is how long a job ran, or runs so far.
func jobTook(j control.Job) string {
	end := time.Now()
	if j.Ended != nil {
		end = *j.Ended
	}
	d := end.Sub(j.Started).Round(100 * time.Millisecond)
	if j.Ended == nil {
		return d.String() + " so far"
	}
	return d.String()
}

// shorten cuts s to n runes with an ellipsis.
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// jobHeader is a RoundTripper that keeps the job id a recovery request's
// answer names (failover.JobHeader).
type jobHeader struct {
	base http.RoundTripper
	id   string
}

func (h *jobHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	base := h.base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(r)
	if err == nil {
		h.id = resp.Header.Get(failover.JobHeader)
	}
	return resp, err
}

// suffix is " (job ID)" for the messages of a recovery command, or "".
func (h *jobHeader) suffix() string {
	if h.id == "" {
		return ""
	}
	return " (job " + h.id + ": lifeboat job show " + h.id + ")"
}
