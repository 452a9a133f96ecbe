package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"
)

// demoOptions are the flags of `lifeboat demo`.
type demoOptions struct {
	Dir     string // "" for a new temporary directory
	Size    int64
	Rounds  int
	Keep    bool
	Seed    uint64
	Verbose bool
}

const demoMinSize = 16 << 20

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "replicate a volume to a recovery site on this machine, prove a recovery point is exact, fail over, reprotect and fail back",
		Description: "Runs a whole site in this process, on 127.0.0.1 with ephemeral ports, in a temporary directory:\n" +
			"no root, no kernel NBD, no cloud, nothing to install.\n" +
			"  1. the recovery site: a CA (like 'lifeboat server init'), a process server over mutual TLS and a\n" +
			"     file target (the replicas are files in the directory);\n" +
			"  2. the protected server: a sparse volume of --size that already holds some data, opened through\n" +
			"     the intercepting volume (tracker.Volume), served over NBD, with a shipper that streams the\n" +
			"     journal to the process server and takes a crash-consistent recovery point every second;\n" +
			"  3. the initial replication: the site has nothing of the volume yet, so it is copied whole (holes\n" +
			"     skipped) before its first recovery point; progress, rate and ETA are shown;\n" +
			"  4. --rounds of workload through NBD with lifeboat's own NBD client (random 4 KiB writes, 1 MiB\n" +
			"     writes, unaligned writes, a repeated block, a trim, a write-zeroes, a flush); after each round\n" +
			"     the writes pause until the next recovery point is on the site, and the sha256 of the volume at\n" +
			"     that moment is recorded; the RPO is shown;\n" +
			"  5. the recovery points, as 'lifeboat points list' shows them;\n" +
			"  6. the latest point (and the first) is read back through the admin API, as 'lifeboat points\n" +
			"     export' does, and its sha256 compared with the source at that tag: MATCH, or exit 1;\n" +
			"  7. a test failover of the latest point, read whole over NBD and compared, then cleaned up;\n" +
			"  8. a failover to the latest point: the site serves the volume, the agent stops shipping;\n" +
			"  9. random writes to the failover volume at the site;\n" +
			" 10. reprotect: the agent stops, a master target (as 'lifeboat master-target') takes its volume, and\n" +
			"     the site replicates the failover volume back, sending only the blocks that differ (--verify);\n" +
			" 11. failback: the primary volume must then hold the failover volume's bytes exactly: MATCH;\n" +
			" 12. the agent starts again and ships only its new writes; their point is compared: MATCH.\n" +
			"Then a summary. Everything is stopped cleanly and the directory removed, unless --keep (it is also\n" +
			"kept when the check fails, for analysis).\n\n" +
			"Examples:\n" +
			"   lifeboat demo\n" +
			"   lifeboat demo --size 1GiB --rounds 5 --verbose\n" +
			"   lifeboat demo --dir /tmp/lb-demo --keep && lifeboat server --data-dir /tmp/lb-demo/server --listen 127.0.0.1:19443",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Usage: "work in `DIR` (created if missing) instead of a new temporary directory"},
			&cli.StringFlag{Name: "size", Value: "256MiB", Usage: "`SIZE` of the demo volume (sparse), at least 16MiB, in whole MiB"},
			&cli.IntFlag{Name: "rounds", Value: 3, Usage: "`N` rounds of workload, each followed by a recovery point (1 to 20)"},
			&cli.BoolFlag{Name: "keep", Usage: "keep the site's and the agent's directories afterwards, to explore them"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed of the random data (the same seed writes the same bytes)"},
			&cli.BoolFlag{Name: "verbose", Usage: "also show the server's, shipper's and tracker's log lines (stderr)"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
				return err
			}
			size, err := parseSize(c.String("size"))
			if err != nil {
				return usageError("--size: %v", err)
			}
			if size < demoMinSize || size%(1<<20) != 0 {
				return usageError("--size %s: the demo needs at least 16MiB, in whole MiB", c.String("size"))
			}
			rounds := c.Int("rounds")
			if rounds < 1 || rounds > 20 {
				return usageError("--rounds %d: want 1 to 20", rounds)
			}
			return runDemo(c.Context, c.App.Writer, c.App.ErrWriter, demoOptions{Dir: c.String("dir"), Size: size,
				Rounds: rounds, Keep: c.Bool("keep"), Seed: c.Uint64("seed"), Verbose: c.Bool("verbose")})
		},
	}
}

// runDemo runs the demo, stops everything and cleans up after it.
func runDemo(ctx context.Context, w, errw io.Writer, o demoOptions) (err error) {
	dir, ownDir, err := demoDir(o.Dir)
	if err != nil {
		return err
	}
	level := slog.LevelWarn
	if o.Verbose {
		level = slog.LevelInfo
	}
	quiet := slog.LevelError // the shipper's: the demo tells of the failover itself
	if o.Verbose {
		quiet = level
	}
	site := &demoSite{log: slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: level})),
		quiet:     slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: quiet})),
		serverDir: filepath.Join(dir, "server"), agentDir: filepath.Join(dir, "agent"), masterDir: filepath.Join(dir, "master")}
	site.volPath = filepath.Join(site.agentDir, demoVolumeName+".img")
	r := &demoRun{o: o, w: w, site: site, start: time.Now(), dir: dir,
		hashes: map[uint64]string{}, labels: map[uint64]string{}}
	defer func() {
		if serr := site.stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop the demo: %w", serr)
		}
		err = r.finish(errw, ownDir, err, ctx.Err() != nil)
	}()
	fmt.Fprintf(w, "Lifeboat demo: protect a volume, replicate it to a recovery site, prove a recovery point is exact,\n"+
		"then test failover, fail over to it, replicate it back and fail back.\n"+
		"Everything runs in this process on 127.0.0.1, in %s (no root, no kernel NBD, no cloud).\n", dir)
	return r.run(ctx)
}

// demoDir returns the working directory and whether the demo created it.
// A given --dir must not hold an earlier demo's server/ or agent/.
func demoDir(dir string) (string, bool, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "lifeboat-demo-")
		if err != nil {
			return "", false, usageError("create a temporary directory: %v; set TMPDIR or pass --dir", err)
		}
		return d, true, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, usageError("--dir: %v", err)
	}
	for _, sub := range []string{"server", "agent", "master"} {
		if _, err := os.Lstat(filepath.Join(dir, sub)); err == nil {
			return "", false, usageError("--dir %s already holds %s/ from an earlier demo; remove it or pick another --dir", dir, sub)
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", false, usageError("--dir: %v", err)
		}
	}
	return dir, false, nil
}

// finish prints how long the demo took and removes its files, unless
// --keep or a failure (not an interruption) asks to keep them.
func (r *demoRun) finish(errw io.Writer, ownDir bool, err error, interrupted bool) error {
	w, dir := r.w, r.dir
	switch {
	case r.o.Keep:
		fmt.Fprintf(w, "\nkept %s:\n"+
			"  server/  the recovery site: pki/ (CA, admin identity), spool/, replicas/ (the file target)\n"+
			"  agent/   %s.img (the protected volume), journal/%s, the agent's certificate\n"+
			"  master/  the master target of the reprotect and failback: pki/, spool/, disks/\n"+
			"explore it:\n"+
			"  lifeboat server --data-dir %s --listen 127.0.0.1:19443 &\n"+
			"  lifeboat points list --server https://127.0.0.1:19443 --data-dir %s --volume %s\n",
			dir, demoVolumeName, demoVolumeName, r.site.serverDir, r.site.serverDir, demoVolumeName)
	case err != nil && !interrupted:
		fmt.Fprintf(errw, "kept %s for analysis (remove it when done)\n", dir)
	default:
		var rerr error
		if ownDir {
			rerr = os.RemoveAll(dir)
		} else {
			rerr = errors.Join(os.RemoveAll(r.site.serverDir), os.RemoveAll(r.site.agentDir), os.RemoveAll(r.site.masterDir))
		}
		if rerr != nil && err == nil {
			err = fmt.Errorf("clean up %s: %w (remove it by hand)", dir, rerr)
		}
		if err != nil && interrupted && rerr == nil {
			err = failure("interrupted: the demo stopped and removed %s", dir)
		}
	}
	return err
}
