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
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/fusefs"
	"lifeboat/nbd"
	"lifeboat/pipeline"
	"lifeboat/tracker"
)

// agentOptions are the flags of `lifeboat agent`.
type agentOptions struct {
	Volumes    []volumeSpec
	JournalDir string
	NBD        []string // HOST:PORT or unix:PATH, one listener each
	FuseMount  string
	// NBD limits: connections served at once, payload bytes one
	// connection holds.
	NBDMaxConnections int
	NBDMaxInFlight    int64
	SegmentAge        time.Duration
	DrainTime         time.Duration
	// Replication ships the journal to a process server when Server is set.
	Replication replicationOptions

	MetricsListen string // --metrics-listen; "" for none
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "protect volumes: journal every write and serve them over NBD and/or as FUSE files",
		Description: "Serves each --volume through tracker.Volume, the one interception point: every write is\n" +
			"journaled (DIR/NAME under --journal-dir), written to the backing device or file, and marked in a\n" +
			"persisted dirty bitmap. Attach the volumes with any NBD client (nbd://ADDR/NAME, or\n" +
			"nbd+unix:///NAME?socket=PATH with --nbd unix:PATH), or, where the kernel has no nbd module, with a\n" +
			"loop device over the FUSE file (losetup -f --show MOUNT/NAME).\n\n" +
			"NBD has no authentication: whoever reaches the address can read and write the volumes. Prefer a\n" +
			"Unix socket (mode 0660: root and the socket's group) or 127.0.0.1; another address is warned about.\n\n" +
			"Memory is bounded by settings, not by how busy the volumes are: NBD payloads held are at most\n" +
			"--nbd-max-inflight per connection (one connection per attached volume is usual), and with --server\n" +
			"each volume's shipper streams its segments from the journal file through a zstd encoder with a 1 MiB\n" +
			"window (a few MiB per volume, whatever the segment size). Measured with bench/memory.sh: 7-8 MiB\n" +
			"per busy volume at the defaults. GOMEMLIMIT (Go's soft memory limit) may be set as well.\n\n" +
			"SIGTERM or SIGINT drains the requests in flight, flushes, seals the journal and unmounts.\n" +
			"Only one agent may use a journal directory at a time.\n\n" +
			"With --server, each volume is replicated: sealed segments go to the process server over HTTPS\n" +
			"with this agent's certificate, a volume seen for the first time is copied whole (holes and zero\n" +
			"regions skipped) before its first recovery point, and a crash-consistent point is taken every\n" +
			"--tag-interval. 'lifeboat status' shows progress and RPO.\n\n" +
			"Without --volume the agent is managed by the site's configuration server: register the machine once\n" +
			"('lifeboat agent register'), then the site says what to protect, with which policy and where to ship\n" +
			"('lifeboat protect' there); the agent sends a heartbeat with each volume's state and keeps the last\n" +
			"configuration in JOURNAL-DIR/managed.json, so that it protects its volumes even while the site is down.\n\n" +
			"Examples:\n" +
			"   lifeboat agent register --server https://dr.example:9440 --passphrase-file /root/lifeboat.pass\n" +
			"   lifeboat agent --identity-dir /var/lib/lifeboat/identity --nbd unix:/run/lifeboat/nbd.sock\n" +
			"   lifeboat agent --volume db=/dev/sdb --journal-dir /var/lib/lifeboat/journal\n" +
			"   lifeboat agent --volume db=/dev/sdb --nbd unix:/run/lifeboat/nbd.sock\n" +
			"   qemu-io -f raw -c 'read 0 1M' 'nbd+unix:///db?socket=/run/lifeboat/nbd.sock'\n" +
			"   lifeboat agent --volume scratch=/srv/scratch.img,size=10GiB --fuse-mount /run/lifeboat \\\n" +
			"                  --journal-dir /var/lib/lifeboat/journal\n" +
			"   losetup -f --show /run/lifeboat/scratch\n" +
			"   lifeboat agent --volume db=/dev/sdb --server https://dr.example:9443 \\\n" +
			"                  --cert web01.crt --key web01.key --ca ca.crt --tag-interval 10s",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "volume",
				Usage: "`NAME=PATH[,size=SIZE][,ro]`: a block device or file to protect (repeatable); size= creates a sparse file when PATH does not exist; ro serves it read-only.\n" +
					"\tWithout --volume the agent is managed by the configuration server it registered with (--identity-dir)"},
			&cli.StringFlag{Name: "identity-dir", Value: defaultIdentityDir,
				Usage: "`DIR` of this machine's registration ('lifeboat agent register'), used when no --volume is given"},
			&cli.StringFlag{Name: "control", Usage: "`URL` of the configuration server, if it moved since the registration (https://HOST[:9440])"},
			&cli.StringFlag{Name: "journal-dir", Value: "/var/lib/lifeboat/journal",
				Usage: "`DIR` holding one journal directory per volume (segments, dirty bitmap, state)"},
			&cli.StringSliceFlag{Name: "nbd", Value: cli.NewStringSlice("127.0.0.1:10809"),
				Usage: "`ADDR` to serve NBD on: HOST:PORT or unix:PATH (a socket of mode 0660); repeat it to serve on both;\n" +
					"\texport names are the volume names; empty to disable"},
			&cli.IntFlag{Name: "nbd-max-connections", Value: nbd.DefaultMaxConnections,
				Usage: "serve at most `N` NBD connections at once; more are refused with an error"},
			&cli.StringFlag{Name: "nbd-max-inflight", Value: "64MiB",
				Usage: "`SIZE` of payloads one NBD connection may hold; beyond it the agent stops reading its requests until some complete;\n" +
					"\tthe agent's NBD memory is at most this times the connections in use (lower it when many volumes are busy at once)"},
			&cli.StringFlag{Name: "fuse-mount", Usage: "`DIR` to show each volume as a file in (needs root and /dev/fuse)"},
			&cli.DurationFlag{Name: "segment-age", Value: tracker.DefaultSegmentAge,
				Usage: "seal a journal segment at this `AGE` so that it can be shipped"},
			&cli.DurationFlag{Name: "drain-timeout", Value: 30 * time.Second,
				Usage: "on shutdown, wait at most this `LONG` for NBD requests in flight"},
		}, append(replicationFlags(), metricsFlag())...),
		OnUsageError: onUsageError,
		Subcommands:  []*cli.Command{agentRegisterCommand()},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("agent takes no arguments, got %q; use --volume NAME=PATH", c.Args().Slice())
			}
			o := agentOptions{JournalDir: c.String("journal-dir"), FuseMount: c.String("fuse-mount"),
				SegmentAge: c.Duration("segment-age"), DrainTime: c.Duration("drain-timeout"),
				MetricsListen: c.String("metrics-listen")}
			if err := parseNBDOptions(c, &o); err != nil {
				return err
			}
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
			if len(o.Volumes) == 0 {
				return managedAgentAction(c, o)
			}
			if c.IsSet("control") {
				return usageError("--control is for an agent managed by the configuration server: drop it, or drop --volume")
			}
			r, err := parseReplicationOptions(c)
			if err != nil {
				return err
			}
			o.Replication = r
			if len(o.NBD) == 0 && o.FuseMount == "" {
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
	srvDone chan error // one value per listener
	mount   *fusefs.Mount
	// shippers, one per volume, when replicated (startShippers).
	shippers []*pipeline.Shipper
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
	stopMetrics, err := a.startMetrics(out, o.MetricsListen)
	if err != nil {
		stopShippers()
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
	stopMetrics() // before the volumes close: a scrape reads them
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
			v.HotSetBytes = o.Replication.HotSet
			v.CopyMemory = o.Replication.CopyMemory
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
	if len(o.NBD) > 0 {
		if err := a.startNBD(ctx, out, o); err != nil {
			return err
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

// startNBD listens on every --nbd address and serves the volumes there.
func (a *agent) startNBD(ctx context.Context, out io.Writer, o agentOptions) error {
	var lns []net.Listener
	for _, addr := range o.NBD {
		ln, err := nbd.Listen(addr, a.log)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			if errors.Is(err, nbd.ErrAddress) {
				return usageError("--nbd %s: %v", addr, err)
			}
			return fmt.Errorf("--nbd %s: %w", addr, err)
		}
		lns = append(lns, ln)
	}
	a.srv = nbd.NewServer()
	a.srv.Logger = a.log
	a.srv.MaxConnections, a.srv.MaxInFlightBytes = o.NBDMaxConnections, o.NBDMaxInFlight
	for i, v := range a.vols {
		a.srv.Exports = append(a.srv.Exports, nbd.Export{Name: a.specs[i].Name, Description: a.specs[i].Path,
			Backend: nbd.WithExtents(v, v.Extents), ReadOnly: a.specs[i].ReadOnly})
	}
	a.srvDone = make(chan error, len(lns))
	for _, ln := range lns {
		go func() { a.srvDone <- a.srv.Serve(ctx, ln) }()
		for _, s := range a.specs {
			fmt.Fprintf(out, "serving %s (%s) at %s\n", s.Name, s.Path, nbd.URI(ln.Addr(), s.Name))
		}
	}
	return nil
}

// parseNBDOptions reads --nbd and the NBD limits; "" alone disables NBD,
// and then the limits may not be given.
func parseNBDOptions(c *cli.Context, o *agentOptions) error {
	addrs := c.StringSlice("nbd")
	if len(addrs) == 1 && addrs[0] == "" {
		addrs = nil
	}
	for i, a := range addrs {
		if a == "" {
			return usageError("--nbd \"\" disables NBD; do not combine it with another --nbd")
		}
		if slices.Contains(addrs[:i], a) {
			return usageError("--nbd %s is given twice", a)
		}
	}
	o.NBD = addrs
	if len(addrs) == 0 {
		for _, f := range []string{"nbd-max-connections", "nbd-max-inflight"} {
			if c.IsSet(f) {
				return usageError("--%s is set but NBD is disabled (--nbd \"\"); drop one of them", f)
			}
		}
	}
	if o.NBDMaxConnections = c.Int("nbd-max-connections"); o.NBDMaxConnections < 1 {
		return usageError("--nbd-max-connections %d: want at least 1", o.NBDMaxConnections)
	}
	n, err := parseSize(c.String("nbd-max-inflight"))
	if err != nil {
		return usageError("--nbd-max-inflight: %v", err)
	}
	if n < nbd.MinBlockSize {
		return usageError("--nbd-max-inflight %s: want at least %d bytes (64MiB holds two of the largest requests)",
			c.String("nbd-max-inflight"), nbd.MinBlockSize)
	}
	o.NBDMaxInFlight = n
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
