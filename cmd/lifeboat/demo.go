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

	"lifeboat/hrl"
	"lifeboat/tracker"
)

// demoOptions are the flags of `lifeboat demo`.
type demoOptions struct {
	Dir  string // "" for a new temporary directory
	Size int64
	Keep bool
	Seed uint64
}

// demoPaths are the files a demo creates.
type demoPaths struct {
	dir, volume, initial, journal, replayed string
}

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "journal a workload on a scratch volume, then prove the journal replays to the same bytes",
		Description: "Until the replication pipeline exists, this shows what the agent does, on a sparse file, without root:\n" +
			"  1. creates a volume file of --size with some initial data, and a copy of it (what the initial\n" +
			"     replication leaves on the recovery site);\n" +
			"  2. opens it through the intercepting volume (tracker.Volume) and writes a workload: random 4 KiB and\n" +
			"     1 MiB writes, unaligned writes, one block repeated (dedupe), zeros, write-zeroes and a trim,\n" +
			"     taking a crash-consistent and an app-consistent recovery point (journal tags);\n" +
			"  3. prints the journal like 'lifeboat journal inspect' and verifies it;\n" +
			"  4. replays every segment onto the copy, checks each recovery point against the volume as it was\n" +
			"     when tagged, and compares the sha256 of the replayed copy with the volume: MATCH or exit 1.\n" +
			"The directory is removed at the end unless --keep (it is also kept when the check fails).\n\n" +
			"Examples:\n" +
			"   lifeboat demo\n" +
			"   lifeboat demo --size 256MiB --dir /tmp/lb-demo --keep && lifeboat journal inspect /tmp/lb-demo/journal",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Usage: "work in `DIR` (created if missing) instead of a new temporary directory"},
			&cli.StringFlag{Name: "size", Value: "64MiB", Usage: "size of the scratch volume (sparse), at least 8MiB, a multiple of 4KiB"},
			&cli.BoolFlag{Name: "keep", Usage: "keep the volume, its copies and the journal afterwards, to explore them"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed of the random workload (the same seed writes the same bytes)"},
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
			if size < 8<<20 || size%4096 != 0 {
				return usageError("--size %s: the demo needs at least 8MiB, in whole 4KiB blocks", c.String("size"))
			}
			return runDemo(c.Context, c.App.Writer, c.App.ErrWriter,
				demoOptions{Dir: c.String("dir"), Size: size, Keep: c.Bool("keep"), Seed: c.Uint64("seed")})
		},
	}
}

// runDemo runs the demo and cleans up after it.
func runDemo(ctx context.Context, w, errw io.Writer, o demoOptions) (err error) {
	start := time.Now()
	p, err := demoSetup(o.Dir)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintf(w, "demo took %s\n", time.Since(start).Round(10*time.Millisecond))
		switch {
		case o.Keep:
			fmt.Fprintf(w, "\nkept %s:\n  volume.img   the protected volume\n  initial.img  its content before the workload\n"+
				"  replayed.img initial.img with the journal replayed\n  journal/     the segments; try: lifeboat journal inspect %s\n",
				p.dir, p.journal)
		case err != nil && ctx.Err() == nil:
			fmt.Fprintf(errw, "kept %s for analysis (remove it when done)\n", p.dir)
		default:
			if rerr := p.remove(o.Dir == ""); rerr != nil && err == nil {
				err = fmt.Errorf("clean up %s: %w (remove it by hand)", p.dir, rerr)
			}
		}
	}()
	fmt.Fprintf(w, "==> scratch volume %s (%s, sparse), journal %s\n", p.volume, humanBytes(uint64(o.Size)), p.journal)
	if err := makeVolume(p, o.Size, o.Seed); err != nil {
		return err
	}
	v := tracker.NewVolume(p.volume, p.journal)
	v.SegmentAge = 0         // seal on size and tags only, so the output is the same every run
	v.SegmentBytes = 4 << 20 // small segments, so the demo shows several
	v.Logger = slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := v.Open(ctx); err != nil {
		return fmt.Errorf("open the scratch volume: %w", err)
	}
	fmt.Fprintf(w, "==> writing the workload through the intercepting volume (seed %d)\n", o.Seed)
	points, werr := runWorkload(ctx, w, v, p.volume, o.Seed)
	if cerr := v.Close(); werr == nil && cerr != nil {
		werr = fmt.Errorf("close the scratch volume: %w", cerr)
	}
	if werr != nil {
		return werr
	}
	rep, err := inspectPath(p.journal, false)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\n==> journal %s\n", p.journal)
	if err := writeDemoSummary(w, &rep); err != nil {
		return err
	}
	if _, err := hrl.Check(hrl.OSFS{}, p.journal); err != nil {
		return failure("the demo journal does not verify:\n  %v\nthis is a bug: please report it with the output above", err)
	}
	fmt.Fprintf(w, "verify:      ok (every checksum, every segment sealed, continuity)\n")
	fmt.Fprintf(w, "\n==> replaying the journal onto initial.img (what the recovery site holds)\n")
	return replayAndCompare(w, p, &rep, points)
}

// demoSetup creates the working directory and names the files in it.
func demoSetup(dir string) (demoPaths, error) {
	var err error
	if dir == "" {
		if dir, err = os.MkdirTemp("", "lifeboat-demo-"); err != nil {
			return demoPaths{}, usageError("create a temporary directory: %v; set TMPDIR or pass --dir", err)
		}
	} else if err = os.MkdirAll(dir, 0o755); err != nil {
		return demoPaths{}, usageError("--dir: %v", err)
	}
	p := demoPaths{dir: dir, volume: filepath.Join(dir, "volume.img"), initial: filepath.Join(dir, "initial.img"),
		journal: filepath.Join(dir, "journal"), replayed: filepath.Join(dir, "replayed.img")}
	for _, f := range []string{p.volume, p.initial, p.journal, p.replayed} {
		if _, err := os.Lstat(f); err == nil {
			return p, usageError("--dir %s already holds %s from an earlier demo; remove it or pick another --dir", dir, filepath.Base(f))
		} else if !errors.Is(err, os.ErrNotExist) {
			return p, usageError("--dir: %v", err)
		}
	}
	return p, nil
}

// remove deletes what the demo created (the whole directory if it made it).
func (p demoPaths) remove(ownDir bool) error {
	if ownDir {
		return os.RemoveAll(p.dir)
	}
	var errs []error
	for _, f := range []string{p.volume, p.initial, p.journal, p.replayed} {
		errs = append(errs, os.RemoveAll(f))
	}
	return errors.Join(errs...)
}

// writeDemoSummary prints one line per segment, the totals by type and the
// recovery points.
func writeDemoSummary(w io.Writer, rep *journalReport) error {
	fmt.Fprintf(w, "%-22s %-14s %8s %10s  %s\n", "segment", "seqs", "records", "size", "tags")
	for _, s := range rep.Segments {
		tags := ""
		for _, t := range s.Tags {
			tags += fmt.Sprintf("%s %q @%d ", t.Kind, t.Name, t.Seq)
		}
		fmt.Fprintf(w, "%-22s %-14s %8d %10s  %s\n", filepath.Base(s.File), fmt.Sprintf("%d..%d", s.FirstSeq, s.LastSeq),
			s.Count, humanBytes(uint64(s.FileSize)), tags)
	}
	fmt.Fprintln(w)
	return writeTotals(w, rep)
}
