package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/failover"
	"lifeboat/internal/dirlock"
	"lifeboat/internal/metrics"
	"lifeboat/nbd"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// serverOptions are the flags of `lifeboat server` and `lifeboat process-server`.
type serverOptions struct {
	DataDir      string
	Listen       string
	Target       string
	SpoolQuota   int64
	ThrottleFree float64
	Retention    time.Duration
	Azure        azureOptions
	Limits       limitOptions
	// Recovery volumes (lifeboat server only): NBD address ("" none) and
	// FUSE mount directory ("" none).
	Recovery    bool
	RecoveryNBD string
	FuseMount   string
	// Control runs the configuration server (lifeboat server only).
	Control *controlOptions
	// MetricsListen is --metrics-listen; "" for none.
	MetricsListen string
}

func serverFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "data-dir", Value: "/var/lib/lifeboat/server",
			Usage: "`DIR` with the site's CA (from 'server init'), the spool and, by default, the replicas"},
		&cli.StringFlag{Name: "listen", Value: pipeline.DefaultAddr,
			Usage: "`ADDR` for the data port (HTTPS with client certificates; there is no plaintext port)"},
		&cli.StringFlag{Name: "target", Usage: "`URL` where replicas live: file:///DIR (default file://DATA-DIR/replicas) or\n" +
			"\tazure://ACCOUNT/CONTAINER[/PREFIX] (page blobs; credentials from --azure-credentials or the environment)"},
		&cli.StringFlag{Name: "spool-quota", Value: "8GiB", Usage: "`SIZE` the spool may hold before agents are throttled"},
		&cli.Float64Flag{Name: "throttle-free", Value: pipeline.DefaultThrottleFree,
			Usage: "throttle agents when less than this `FRACTION` of the spool quota is free"},
		&cli.DurationFlag{Name: "retention", Value: targets.DefaultRetentionWindow,
			Usage: "keep recovery points for this `WINDOW` (at most 360h), thinned on a tiered schedule"},
	}, append(limitFlags(), append(targetFlags(), metricsFlag())...)...)
}

func parseServerOptions(c *cli.Context) (serverOptions, error) {
	o := serverOptions{DataDir: c.String("data-dir"), Listen: c.String("listen"), Target: c.String("target"),
		ThrottleFree: c.Float64("throttle-free"), Retention: c.Duration("retention"), MetricsListen: c.String("metrics-listen")}
	if c.Args().Present() {
		return o, usageError("%s takes no arguments, got %q", c.Command.Name, c.Args().Slice())
	}
	q, err := parseSize(c.String("spool-quota"))
	if err != nil {
		return o, usageError("--spool-quota: %v", err)
	}
	o.SpoolQuota = q
	if o.ThrottleFree < 0 || o.ThrottleFree >= 1 {
		return o, usageError("--throttle-free %v: want a fraction in [0, 1), e.g. 0.2", o.ThrottleFree)
	}
	if err := (targets.Retention{Window: o.Retention}).Validate(); err != nil {
		return o, usageError("--retention: %v", err)
	}
	if o.Target == "" {
		// Absolute: a file:// URL of a relative --data-dir ("file://site/replicas")
		// reads "site" as the host and is refused.
		dir, err := filepath.Abs(o.DataDir)
		if err != nil {
			return o, usageError("--data-dir %s: %v", o.DataDir, err)
		}
		o.Target = "file://" + filepath.Join(dir, "replicas")
	}
	if o.Limits, err = parseLimitOptions(c); err != nil {
		return o, err
	}
	o.Azure, err = parseAzureOptions(c)
	return o, err
}

// recoveryFlags are the flags of the recovery volumes `lifeboat server`
// serves (test failovers and failovers).
func recoveryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "recovery-nbd", Value: failover.DefaultNBDAddr,
			Usage: "`ADDR` (HOST:PORT or unix:PATH) where test failover and failover volumes are served over NBD;\n" +
				"\t\"\" serves none. NBD has no authentication: serve it beyond the loopback only on a network you trust"},
		&cli.StringFlag{Name: "fuse-mount", Usage: "`DIR` where each test failover and failover volume also appears as a file, for a loop device\n" +
			"\t(losetup -f --show DIR/MACHINE.NAME.test); needs root and /dev/fuse"},
	}
}

func serverCommand() *cli.Command {
	cmd := processServerCommand()
	cmd.Name = "server"
	cmd.Flags = append(append(cmd.Flags, recoveryFlags()...), controlFlags()...)
	cmd.Action = func(c *cli.Context) error {
		o, err := parseServerOptions(c)
		if err != nil {
			return err
		}
		o.Recovery, o.RecoveryNBD, o.FuseMount = true, c.String("recovery-nbd"), c.String("fuse-mount")
		if c.String("control-listen") != "" {
			co, err := parseControlOptions(c, o.Listen)
			if err != nil {
				return err
			}
			o.Control = &co
		}
		return runServer(c.Context, c.App.Writer, o)
	}
	cmd.Usage = "run the recovery site: process server and target (run 'server init' once first)"
	cmd.Description = "Receives journal segments from agents over HTTPS with client certificates (TLS 1.3), spools\n" +
		"them durably, applies them in order to the target and turns every tag into a recovery point.\n" +
		"It also serves test failover and failover volumes (lifeboat test-failover, lifeboat failover) over\n" +
		"NBD on --recovery-nbd and, with --fuse-mount, as files for a loop device.\n" +
		"It also runs the configuration server on --control-listen: agents register there (lifeboat agent register)\n" +
		"and the site protects their volumes with policies (lifeboat policy, lifeboat protect, lifeboat status).\n\n" +
		"Examples:\n" +
		"   lifeboat server init --data-dir /var/lib/lifeboat/server\n" +
		"   lifeboat certs issue --data-dir /var/lib/lifeboat/server --name web01 --out /tmp/web01\n" +
		"   lifeboat server --data-dir /var/lib/lifeboat/server --target file:///srv/replicas\n\n" +
		"To Azure page blobs (one fixed VHD per volume, points as snapshots), encrypted with a key that stays here:\n" +
		"   head -c 64 /dev/urandom > /etc/lifeboat/replica.key && chmod 600 /etc/lifeboat/replica.key\n" +
		"   export AZURE_STORAGE_CONNECTION_STRING='AccountName=myaccount;AccountKey=...'\n" +
		"   lifeboat server --target azure://myaccount/replicas --encryption-key /etc/lifeboat/replica.key"
	cmd.Subcommands = []*cli.Command{serverInitCommand(), serverPassphraseCommand()}
	return cmd
}

func processServerCommand() *cli.Command {
	return &cli.Command{
		Name:  "process-server",
		Usage: "run a scale-out process server: receive, spool and apply journal segments",
		Description: "A process server on its own, for sites that spread agents over several of them. It uses the\n" +
			"CA in --data-dir (copy DATA-DIR/pki from the main server) and its own spool.\n\n" +
			"Example:\n" +
			"   lifeboat process-server --data-dir /var/lib/lifeboat/ps2 --listen :9443 --target file:///srv/replicas",
		Flags:        serverFlags(),
		OnUsageError: onUsageError,
		Subcommands:  []*cli.Command{processServerRegisterCommand(), processServerAllowCommand(), processServerRemoveCommand()},
		Action: func(c *cli.Context) error {
			o, err := parseServerOptions(c)
			if err != nil {
				return err
			}
			return runServer(c.Context, c.App.Writer, o)
		},
	}
}

// targetCheckTimeout bounds the check at start that the target answers.
const targetCheckTimeout = 45 * time.Second

func runServer(ctx context.Context, out io.Writer, o serverOptions) error {
	tlsConf, err := pki.ServerTLS(o.DataDir)
	if err != nil {
		if errors.Is(err, pki.ErrNoCA) {
			return failure("%v", err)
		}
		return err
	}
	// One server per data directory: its spool, and the lease id its
	// Azure replicas are held under, are its own.
	unlock, err := dirlock.Lock(filepath.Join(o.DataDir, "server.lock"))
	if errors.Is(err, dirlock.ErrLocked) {
		return failure("--data-dir %s is in use: %v; stop that server first", o.DataDir, err)
	}
	if err != nil {
		return failure("--data-dir %s: %v", o.DataDir, err)
	}
	defer unlock()
	target, err := openTarget(o)
	if err != nil {
		return err
	}
	defer target.Close()
	// Fail fast when the target is down or refuses us: few retries here,
	// the target's own policy afterwards.
	checkCtx, cancel := context.WithTimeout(policy.WithRetryOptions(ctx, policy.RetryOptions{
		MaxRetries: 2, RetryDelay: time.Second, MaxRetryDelay: 2 * time.Second, TryTimeout: 15 * time.Second}), targetCheckTimeout)
	defer cancel()
	_, err = target.Volumes(checkCtx)
	if kc, ok := target.(interface{ CheckKeys(context.Context) error }); ok && err == nil {
		err = kc.CheckKeys(checkCtx)
	}
	if err != nil {
		return failure("--target %s is not usable: %v", o.Target, err)
	}
	var ctl *control.Server
	if o.Control != nil {
		var closeStore func()
		if ctl, closeStore, err = newControl(o.DataDir, *o.Control, o.Azure.KeyFile != "" || o.Azure.KeyEnv != ""); err != nil {
			return err
		}
		defer closeStore()
	}
	var faultErr error
	psRet := loadPSRetentions(o.DataDir) // a registered process server's, from its heartbeats
	site := &failover.Site{DataDir: o.DataDir, Target: target, TLS: tlsConf, Logger: slog.Default(),
		Configure: func(srv *pipeline.Server) {
			srv.SpoolQuota, srv.ThrottleFree = o.SpoolQuota, o.ThrottleFree
			srv.Retention = targets.Retention{Window: o.Retention}
			if ctl != nil {
				srv.RetentionFor = ctl.RetentionFor
			} else {
				srv.RetentionFor = psRet.For
			}
			o.Limits.apply(srv)
			faultErr = installFaults(srv)
		}}
	if o.Recovery {
		site.Recovery, site.NBDAddr, site.FUSEDir = true, o.RecoveryNBD, o.FuseMount
		if ctl != nil {
			site.Jobs = ctl.JobRecorder() // recovery requests are jobs (lifeboat jobs)
		}
	}
	if ctl != nil {
		site.ReverseTagIntervalFor = ctl.FailbackTagInterval
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return usageError("--listen %s: %v", o.Listen, err)
	}
	defer ln.Close()
	err = site.Open(ctx)
	if err == nil {
		err = faultErr
	}
	if errors.Is(err, nbd.ErrAddress) {
		return usageError("--recovery-nbd %s: %v", o.RecoveryNBD, err)
	}
	if err != nil {
		site.Close()
		return err
	}
	defer site.Close()
	collectors := []prometheus.Collector{serverMetrics(site.Server)}
	if ctl != nil {
		collectors = append(collectors, &metrics.ControlCollector{Control: ctl})
	}
	stopMetrics, err := startMetrics(out, o.MetricsListen, collectors...)
	if err != nil {
		return err
	}
	defer stopMetrics()
	fmt.Fprintf(out, "process server listening on https://%s (target %s, spool %s)\n", ln.Addr(), describeTarget(o),
		filepath.Join(o.DataDir, "spool"))
	if a := site.NBDListenAddr(); a != nil {
		fmt.Fprintf(out, "recovery volumes served over NBD at %s\n", nbd.URI(a, ""))
	}
	if o.Recovery && o.FuseMount != "" {
		fmt.Fprintf(out, "recovery volumes shown as files in %s\n", o.FuseMount)
	}
	if ctl == nil {
		stopBeats, err := startPSHeartbeats(ctx, o.DataDir, site.Server, psRet)
		if err != nil {
			return err
		}
		defer stopBeats()
	}
	if ctl != nil {
		ctl.Site, ctl.SiteVolumes = site.Server.Status, psVolumes(site.Server)
		stopControl, err := startControl(ctx, out, *o.Control, ctl)
		if err != nil {
			return err
		}
		defer stopControl()
	}
	err = site.Serve(ctx, ln)
	if err == nil && ctx.Err() != nil {
		fmt.Fprintln(out, "lifeboat server stopped")
	}
	return err
}

// hostPort adds the default data port to an address without one.
func hostPort(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err != nil && !strings.Contains(addr, "]") {
		return net.JoinHostPort(addr, fmt.Sprint(pki.DefaultDataPort))
	}
	return addr
}
