package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/fusefs"
	"lifeboat/nbd"
	"lifeboat/tracker"
)

// agentOptions are the flags of `lifeboat agent`.
type agentOptions struct {
	Volumes    []volumeSpec
	JournalDir string
	NBD        string
	FuseMount  string
	SegmentAge time.Duration
	DrainTime  time.Duration
	// Replication ships the journal to a process server when Server is set.
	Replication replicationOptions
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "protect volumes: journal every write and serve them over NBD and/or as FUSE files",
		Description: "Serves each --volume through tracker.Volume, the one interception point: every write is\n" +
			"journaled (DIR/NAME under --journal-dir), written to the backing device or file, and marked in a\n" +
			"persisted dirty bitmap. Attach the volumes with any NBD client (nbd://ADDR/NAME), or, where the\n" +
			"kernel has no nbd module, with a loop device over the FUSE file (losetup -f --show MOUNT/NAME).\n\n" +
			"SIGTERM or SIGINT drains the requests in flight, flushes, seals the journal and unmounts.\n" +
			"Only one agent may use a journal directory at a time.\n\n" +
			"With --server, each volume is replicated: sealed segments go to the process server over HTTPS\n" +
			"with this agent's certificate, a volume seen for the first time is copied whole (holes and zero\n" +
			"regions skipped) before its first recovery point, and a crash-consistent point is taken every\n" +
			"--tag-interval. 'lifeboat status' shows progress and RPO.\n\n" +
			"Examples:\n" +
			"   lifeboat agent --volume db=/dev/sdb --journal-dir /var/lib/lifeboat/journal\n" +
			"   lifeboat agent --volume scratch=/srv/scratch.img,size=10GiB --fuse-mount /run/lifeboat \\\n" +
			"                  --journal-dir /var/lib/lifeboat/journal\n" +
			"   losetup -f --show /run/lifeboat/scratch\n" +
			"   lifeboat agent --volume db=/dev/sdb --server https://dr.example:9443 \\\n" +
			"                  --cert web01.crt --key web01.key --ca ca.crt --tag-interval 10s",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "volume", Required: true,
				Usage: "`NAME=PATH[,size=SIZE][,ro]`: a block device or file to protect (repeatable); size= creates a sparse file when PATH does not exist; ro serves it read-only"},
			&cli.StringFlag{Name: "journal-dir", Value: "/var/lib/lifeboat/journal",
				Usage: "`DIR` holding one journal directory per volume (segments, dirty bitmap, state)"},
			&cli.StringFlag{Name: "nbd", Value: "127.0.0.1:10809",
				Usage: "`ADDR` to serve NBD on (export names are the volume names); empty to disable"},
			&cli.StringFlag{Name: "fuse-mount", Usage: "`DIR` to show each volume as a file in (needs root and /dev/fuse)"},
			&cli.DurationFlag{Name: "segment-age", Value: tracker.DefaultSegmentAge,
				Usage: "seal a journal segment at this `AGE` so that it can be shipped"},
			&cli.DurationFlag{Name: "drain-timeout", Value: 30 * time.Second,
				Usage: "on shutdown, wait at most this `LONG` for NBD requests in flight"},
		}, replicationFlags()...),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("agent takes no arguments, got %q; use --volume NAME=PATH", c.Args().Slice())
			}
			o := agentOptions{JournalDir: c.String("journal-dir"), NBD: c.String("nbd"), FuseMount: c.String("fuse-mount"),
				SegmentAge: c.Duration("segment-age"), DrainTime: c.Duration("drain-timeout")}
			seen := map[string]bool{}
			for _, s := range c.StringSlice("volume") {
				v, err := parseVolumeSpec(s)
				if err != nil {
					return usageError("%v", err)
				}
				if seen[v.Name] {
					return usageError("--volume %q: the name %s is used twice", s, v.Name)
				}
				seen[v.Name] = true
				o.Volumes = append(o.Volumes, v)
			}
			r, err := parseReplicationOptions(c)
			if err != nil {
				return err
			}
			o.Replication = r
			if o.NBD == "" && o.FuseMount == "" {
				return usageError("nothing to serve: give --nbd ADDR and/or --fuse-mount DIR")
			}
			return runAgent(c.Context, c.App.Writer, o)
		},
	}
}

// agent is a running agent: its volumes and front ends.
type agent struct {
	log     *slog.Logger
	vols    []*tracker.Volume
	specs   []volumeSpec
	srv     *nbd.Server
	srvDone chan error
	mount   *fusefs.Mount
}

// runAgent serves until ctx is cancelled (SIGTERM/SIGINT), a front end
// fails, or the FUSE mount disappears; then it shuts down cleanly.
func runAgent(ctx context.Context, out io.Writer, o agentOptions) error {
	a := &agent{log: slog.Default(), specs: o.Volumes}
	if err := a.openVolumes(ctx, o); err != nil {
		a.closeVolumes()
		return err
	}
	if err := a.startFrontEnds(ctx, out, o); err != nil {
		a.stop(o.DrainTime)
		return err
	}
	stopShippers, err := a.startShippers(ctx, o)
	if err != nil {
		a.stop(o.DrainTime)
		return err
	}
	var fuseGone <-chan struct{}
	if a.mount != nil {
		fuseGone = a.mount.Done()
	}
	var cause error
	select {
	case <-ctx.Done():
		a.log.Info("stopping: signal received; draining requests, flushing, sealing the journal")
	case err := <-a.srvDone:
		cause = fmt.Errorf("NBD server stopped: %w", err)
	case <-fuseGone:
		cause = errors.New("the FUSE mount was unmounted from outside; stopping")
	}
	stopShippers()
	if err := a.stop(o.DrainTime); err != nil {
		return errors.Join(cause, err)
	}
	if cause != nil {
		return cause
	}
	fmt.Fprintln(out, "lifeboat agent stopped cleanly: journal sealed, volumes flushed")
	return nil
}

func (a *agent) openVolumes(ctx context.Context, o agentOptions) error {
	for _, s := range o.Volumes {
		if err := s.prepare(); err != nil {
			return usageError("%v", err)
		}
		v := tracker.NewVolume(s.Path, filepath.Join(o.JournalDir, s.Name))
		v.SegmentAge = o.SegmentAge
		if o.Replication.Server != "" {
			// A volume seen for the first time is copied whole before its
			// first recovery point; the journal may not outgrow the quota.
			v.InitialSync = true
			v.JournalQuota = o.Replication.JournalQuota
			v.CheckpointInterval = o.Replication.Checkpoint
		}
		v.Logger = a.log.With("volume", s.Name)
		if err := v.Open(ctx); err != nil {
			if errors.Is(err, tracker.ErrLocked) {
				return failure("volume %s: %v", s.Name, err)
			}
			return fmt.Errorf("volume %s: %w", s.Name, err)
		}
		a.vols = append(a.vols, v)
		if st := v.Status(); st.Resync != "" {
			a.log.Warn("volume needs a resync of its dirty regions before its next recovery point",
				"volume", s.Name, "reason", st.Resync, "dirty_regions", st.DirtyRegions)
		}
	}
	return nil
}

func (a *agent) startFrontEnds(ctx context.Context, out io.Writer, o agentOptions) error {
	if o.NBD != "" {
		ln, err := net.Listen("tcp", o.NBD)
		if err != nil {
			return usageError("--nbd %s: %v", o.NBD, err)
		}
		a.srv = nbd.NewServer()
		a.srv.Logger = a.log
		for i, v := range a.vols {
			a.srv.Exports = append(a.srv.Exports, nbd.Export{Name: a.specs[i].Name, Description: a.specs[i].Path,
				Backend: nbd.WithExtents(v, v.Extents), ReadOnly: a.specs[i].ReadOnly})
		}
		a.srvDone = make(chan error, 1)
		go func() { a.srvDone <- a.srv.Serve(ctx, ln) }()
		for _, s := range a.specs {
			fmt.Fprintf(out, "serving %s (%s) at nbd://%s/%s\n", s.Name, s.Path, ln.Addr(), s.Name)
		}
	}
	if o.FuseMount != "" {
		if err := os.MkdirAll(o.FuseMount, 0o755); err != nil {
			return usageError("--fuse-mount: %v", err)
		}
		a.mount = &fusefs.Mount{Dir: o.FuseMount, Logger: a.log}
		for i, v := range a.vols {
			a.mount.Files = append(a.mount.Files, fusefs.File{Name: a.specs[i].Name, Backend: v, ReadOnly: a.specs[i].ReadOnly})
		}
		if err := a.mount.Mount(ctx); err != nil {
			a.mount = nil
			return fmt.Errorf("--fuse-mount %s: %w", o.FuseMount, err)
		}
		for _, s := range a.specs {
			fmt.Fprintf(out, "serving %s (%s) as %s\n", s.Name, s.Path, filepath.Join(o.FuseMount, s.Name))
		}
	}
	return nil
}

// stop drains and closes the front ends, then flushes and closes the
// volumes (which seals their journals).
func (a *agent) stop(drain time.Duration) error {
	var errs []error
	if a.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		if err := a.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("drain NBD requests: %w", err))
		}
		cancel()
	}
	if a.mount != nil {
		// A loop device attached over a volume file keeps the mount busy:
		// say so and wait for the admin to detach it, up to the drain time.
		deadline := time.Now().Add(drain)
		err := a.mount.Unmount()
		for errors.Is(err, fusefs.ErrBusy) && time.Now().Before(deadline) {
			a.log.Warn("FUSE mount busy: detach loop devices over it (losetup -d) so the agent can stop", "dir", a.mount.Dir)
			time.Sleep(time.Second)
			err = a.mount.Unmount()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", a.mount.Dir, err))
		}
	}
	errs = append(errs, a.closeVolumes())
	return errors.Join(errs...)
}

func (a *agent) closeVolumes() error {
	var errs []error
	for i, v := range a.vols {
		if err := v.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: flush: %w", a.specs[i].Name, err))
		}
		if err := v.Close(); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: close: %w", a.specs[i].Name, err))
		}
	}
	a.vols = nil
	return errors.Join(errs...)
}
