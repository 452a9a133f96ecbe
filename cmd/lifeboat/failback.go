package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"lifeboat/failback"
	"lifeboat/failover"
	"lifeboat/internal/dirlock"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/tracker"
)

func reprotectCommand() *cli.Command {
	return &cli.Command{
		Name:  "reprotect",
		Usage: "replicate a failed-over volume back to the primary site's master target, continuously",
		Description: "The failover volume's journal is shipped to the master target (lifeboat master-target, beside the\n" +
			"primary disk), which applies it to the original disk. The first sync sends only the blocks that may\n" +
			"differ: those written on the failover volume, those the site applied after the failover point, and the\n" +
			"primary volume's dirty regions (what it may have written and never shipped). --verify first compares\n" +
			"those blocks' SHA-256 with the primary disk's and sends only the ones that differ; --full sends every\n" +
			"block (a replaced disk). Writes the primary made that the site never got are rolled back: reprotect\n" +
			"names their bytes and needs --force. The failover is committed. Then: lifeboat failback VOLUME.\n\n" +
			"Examples:\n" +
			"   lifeboat reprotect web01/db --to https://primary.example:9444 --verify --data-dir /var/lib/lifeboat/server",
		ArgsUsage: "VOLUME",
		Flags: append(adminFlags(), outputFlag(),
			&cli.StringFlag{Name: "to", Usage: "the master target, https://`HOST:PORT` (port " + failback.DefaultAddr[1:] + " by default on its side)"},
			&cli.BoolFlag{Name: "verify", Usage: "compare block hashes with the primary disk and send only the blocks that differ"},
			&cli.BoolFlag{Name: "full", Usage: "send every block (the primary disk was replaced)"},
			&cli.BoolFlag{Name: "force", Usage: "roll back the primary volume's writes that the site never received"}),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			return volumeRequest(c, "/reprotect", "%s reprotected", func() (*failover.Request, error) {
				if c.String("to") == "" {
					return nil, usageError("--to https://HOST:PORT (the master target) is required")
				}
				if c.Bool("verify") && c.Bool("full") {
					return nil, usageError("--verify narrows what is sent and --full sends everything: give one")
				}
				return &failover.Request{To: c.String("to"), Verify: c.Bool("verify"), Full: c.Bool("full"), Force: c.Bool("force")}, nil
			})
		},
	}
}

func failbackCommand() *cli.Command {
	return &cli.Command{
		Name:  "failback",
		Usage: "switch a reprotected volume back to its primary disk; forward replication resumes with no initial replication",
		Description: "The failover volume becomes read-only; its last writes reach the primary disk behind a tag (failback\n" +
			"waits for reverse replication, showing its progress, or refuses under --no-wait); the primary disk is\n" +
			"checked equal to it by block hashes; the site's replica is made equal to it by applying what changed\n" +
			"since the failover point, and a recovery point is taken; the primary volume is handed back to its agent\n" +
			"in a new generation; the failover volume and its overlay are removed. Then stop the master target and\n" +
			"start the agent: it ships only new writes.\n\n" +
			"Examples:\n" +
			"   lifeboat failback web01/db --data-dir /var/lib/lifeboat/server",
		ArgsUsage: "VOLUME",
		Flags: append(adminFlags(), outputFlag(),
			&cli.BoolFlag{Name: "no-wait", Usage: "refuse, changing nothing, while reverse replication is behind"}),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			return volumeRequest(c, "/failback", "%s failed back", func() (*failover.Request, error) {
				return &failover.Request{NoWait: c.Bool("no-wait")}, nil
			})
		},
	}
}

func masterTargetCommand() *cli.Command {
	return &cli.Command{
		Name:  "master-target",
		Usage: "on the primary site: take a failed-over volume's reverse replication onto its original disk",
		Description: "Run it beside the primary disks, with the agent stopped (it holds the agent's journal locks), for\n" +
			"reprotect and failback. It is a process server whose target is the primary disks: every segment's\n" +
			"checksums are verified and it is durable before the acknowledgement, applied in order, idempotently.\n" +
			"Only the recovery site's certificate (" + failback.SiteName + ") may write; its own server certificate\n" +
			"comes from the site's CA: on the site, 'lifeboat certs issue --role server --name master --host HOST\n" +
			"--out DIR', then copy DIR's three files here and give them with --cert, --key and --ca.\n" +
			"One TCP port (--listen), opened from the recovery site to the primary site.\n\n" +
			"Examples:\n" +
			"   lifeboat master-target --volume db=/dev/sdb --journal-dir /var/lib/lifeboat/journal --data-dir /var/lib/lifeboat/master \\\n" +
			"                          --cert master.crt --key master.key --ca ca.crt",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "volume", Usage: "`NAME=PATH` of a primary volume, as given to its agent (repeat for more)"},
			&cli.StringFlag{Name: "journal-dir", Value: "/var/lib/lifeboat/journal", Usage: "the agent's `DIR` of journals (DIR/NAME per volume)"},
			&cli.StringFlag{Name: "data-dir", Value: "/var/lib/lifeboat/master", Usage: "`DIR` for the spool and the disks' states"},
			&cli.StringFlag{Name: "cert", Usage: "`FILE`: the master target's server certificate from the site's CA (default DATA-DIR/pki/server.crt)"},
			&cli.StringFlag{Name: "key", Usage: "`FILE`: its key (default DATA-DIR/pki/server.key)"},
			&cli.StringFlag{Name: "ca", Usage: "`FILE`: the site's CA certificate (default DATA-DIR/pki/ca.crt)"},
			&cli.StringFlag{Name: "listen", Value: failback.DefaultAddr, Usage: "`ADDR` for reverse replication (HTTPS with client certificates)"},
			metricsFlag(),
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("master-target takes no arguments (got %q)", c.Args().First())
			}
			m := &failback.MasterTarget{DataDir: c.String("data-dir"), Logger: slog.Default()}
			for _, s := range c.StringSlice("volume") {
				spec, err := parseVolumeSpec(s)
				if err != nil {
					return usageError("%v", err)
				}
				m.Volumes = append(m.Volumes, failback.Primary{Name: spec.Name, Path: spec.Path,
					JournalDir: filepath.Join(c.String("journal-dir"), spec.Name)})
			}
			if len(m.Volumes) == 0 {
				return usageError("give at least one --volume NAME=PATH")
			}
			tlsConf, err := masterTLS(c, m.DataDir)
			if err != nil {
				return err
			}
			m.TLS = tlsConf
			var faultErr error
			m.Configure = func(srv *pipeline.Server) { faultErr = installFaults(srv) }
			if err := os.MkdirAll(m.DataDir, 0o700); err != nil {
				return failure("--data-dir %s: %v", m.DataDir, err)
			}
			unlock, err := dirlock.Lock(filepath.Join(m.DataDir, "server.lock"))
			if errors.Is(err, dirlock.ErrLocked) {
				return failure("--data-dir %s is in use: %v; stop that master target first", m.DataDir, err)
			}
			if err != nil {
				return failure("--data-dir %s: %v", m.DataDir, err)
			}
			defer unlock()
			ln, err := net.Listen("tcp", c.String("listen"))
			if err != nil {
				return usageError("--listen %s: %v", c.String("listen"), err)
			}
			defer ln.Close()
			if err := m.Open(c.Context); err != nil {
				if errors.Is(err, tracker.ErrLocked) {
					return failure("%v", err)
				}
				return err
			}
			defer m.Close()
			if faultErr != nil {
				return faultErr
			}
			stopMetrics, err := startMetrics(c.App.Writer, c.String("metrics-listen"), serverMetrics(m.Server))
			if err != nil {
				return err
			}
			defer stopMetrics()
			fmt.Fprintf(c.App.Writer, "master target listening on https://%s for %d primary volume(s)\n", ln.Addr(), len(m.Volumes))
			err = m.Serve(c.Context, ln)
			if err == nil && c.Context.Err() != nil {
				fmt.Fprintln(c.App.Writer, "lifeboat master-target stopped")
			}
			return err
		},
	}
}

// masterTLS is the master target's server TLS: --cert, --key and --ca
// (all three), or DATA-DIR/pki.
func masterTLS(c *cli.Context, dataDir string) (*tls.Config, error) {
	n := 0
	for _, f := range []string{"cert", "key", "ca"} {
		if c.String(f) != "" {
			n++
		}
	}
	var conf *tls.Config
	var err error
	switch n {
	case 0:
		conf, err = pki.ServerTLS(dataDir)
	case 3:
		conf, err = pki.ServerTLSFiles(c.String("cert"), c.String("key"), c.String("ca"))
	default:
		return nil, usageError("give --cert, --key and --ca together (or none: DATA-DIR/pki)")
	}
	if err != nil {
		return nil, failure("%v", err)
	}
	return conf, nil
}

// volumeRequest sends the request build makes (POST path) for the one
// VOLUME argument and prints the answer.
func volumeRequest(c *cli.Context, path, done string, build func() (*failover.Request, error)) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	args, err := leafArgs(c, 1, "one VOLUME (MACHINE/NAME, an id, or a NAME only one machine has)")
	if err != nil {
		return err
	}
	req, err := build()
	if err != nil {
		return err
	}
	return sendRecovery(c, format, args[0], http.MethodPost, path, req, done)
}
