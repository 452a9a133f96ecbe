package main

import (
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/pipeline"
)

// limitOptions bound what the server spends on its agents: disk it keeps
// free, time an upload may stall, memory its uploads may hold.
type limitOptions struct {
	MinFree       int64
	StallTimeout  time.Duration
	ReceiveMemory int64
}

func limitFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "min-free", Value: "1GiB",
			Usage: "`SIZE` to keep free on the file systems of the spool and of a local --target: a segment that would leave\n" +
				"\tless is refused (503, the agent keeps it and shows 'site disk full') until space is freed"},
		&cli.DurationFlag{Name: "stall-timeout", Value: pipeline.DefaultStallTimeout,
			Usage: "abort an upload that sends nothing for this `DURATION` and release its volume (a slow upload that moves is never cut)"},
		&cli.StringFlag{Name: "receive-memory", Value: "2GiB",
			Usage: "`SIZE` of memory the uploads being received may hold together; beyond it agents are asked to retry (503).\n" +
				"\tUp to half as much again keeps received segments in memory until they are applied"},
	}
}

func parseLimitOptions(c *cli.Context) (limitOptions, error) {
	o := limitOptions{StallTimeout: c.Duration("stall-timeout")}
	var err error
	if o.MinFree, err = parseSize(c.String("min-free")); err != nil {
		return o, usageError("--min-free: %v", err)
	}
	if o.ReceiveMemory, err = parseSize(c.String("receive-memory")); err != nil {
		return o, usageError("--receive-memory: %v", err)
	}
	if o.ReceiveMemory < 64<<20 {
		return o, usageError("--receive-memory %s: want at least 64MiB (one segment of the agent's default size fits in 32MiB)", c.String("receive-memory"))
	}
	if o.StallTimeout < time.Second {
		return o, usageError("--stall-timeout %v: want at least 1s", o.StallTimeout)
	}
	return o, nil
}

func (o limitOptions) apply(srv *pipeline.Server) {
	srv.MinFree, srv.StallTimeout, srv.ReceiveMemory = o.MinFree, o.StallTimeout, o.ReceiveMemory
}
