package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// controlOptions are the configuration server's flags of `lifeboat server`.
type controlOptions struct {
	Listen            string
	Advertise         string
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
}

func controlFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "control-listen", Value: control.DefaultAddr,
			Usage: "`ADDR` of the configuration server (HTTPS: registration, policies, protection, status, events); \"\" runs none"},
		&cli.StringFlag{Name: "advertise", Usage: "`URL` agents ship to, https://HOST:PORT of this server's --listen\n" +
			"\t(default https://THIS-HOST'S-NAME:PORT; it must be one of the names in the server's certificate)"},
		&cli.DurationFlag{Name: "heartbeat-interval", Value: control.DefaultHeartbeatInterval,
			Usage: "how `OFTEN` managed agents send a heartbeat"},
		&cli.DurationFlag{Name: "heartbeat-timeout", Value: control.DefaultHeartbeatTimeout,
			Usage: "raise a Critical event (LB1001) for an agent silent this `LONG`"},
	}
}

func parseControlOptions(c *cli.Context, dataListen string) (controlOptions, error) {
	o := controlOptions{Listen: c.String("control-listen"), Advertise: c.String("advertise"),
		HeartbeatInterval: c.Duration("heartbeat-interval"), HeartbeatTimeout: c.Duration("heartbeat-timeout")}
	if o.HeartbeatInterval < 100*time.Millisecond || o.HeartbeatInterval > 10*time.Minute {
		return o, usageError("--heartbeat-interval %v: allowed range 100ms to 10m", o.HeartbeatInterval)
	}
	if o.HeartbeatTimeout < 2*o.HeartbeatInterval {
		return o, usageError("--heartbeat-timeout %v: want at least twice --heartbeat-interval (%v)", o.HeartbeatTimeout, 2*o.HeartbeatInterval)
	}
	if o.Advertise == "" {
		_, port, err := net.SplitHostPort(dataListen)
		if err != nil {
			return o, usageError("--listen %s: %v", dataListen, err)
		}
		host, _ := os.Hostname()
		o.Advertise = "https://" + net.JoinHostPort(host, port)
	}
	return o, nil
}

// startControl serves the configuration server's API on o.Listen and
// judges the site until ctx is done; the returned function stops it.
func startControl(ctx context.Context, out io.Writer, o controlOptions, ctl *control.Server) (func(), error) {
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, usageError("--control-listen %s: %v", o.Listen, err)
	}
	hs := &http.Server{Handler: ctl.Handler(), TLSConfig: ctl.TLSConfig(), ReadHeaderTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn)}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() {
		if err := hs.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("configuration server stopped", "err", err)
		}
		done <- struct{}{}
	}()
	// The site is judged once per heartbeat interval: each evaluation reads
	// every replica's status (its points: remote calls on Azure), and
	// nothing it judges changes faster than the heartbeats.
	go func() { ctl.Run(ctx, o.HeartbeatInterval); done <- struct{}{} }()
	fmt.Fprintf(out, "configuration server listening on https://%s (agents ship to %s)\n", ln.Addr(), ctl.DataURL)
	return func() {
		cancel()
		sctx, c2 := context.WithTimeout(context.Background(), 5*time.Second)
		hs.Shutdown(sctx)
		c2()
		<-done
		<-done
	}, nil
}

// newControl builds the configuration server of dataDir (its store is
// opened here; close it with the returned function).
func newControl(dataDir string, o controlOptions, encrypted bool) (*control.Server, func(), error) {
	ca, err := pki.Load(dataDir)
	if err != nil {
		return nil, nil, failure("%v", err)
	}
	tlsConf, err := pki.ServerTLS(dataDir)
	if err != nil {
		return nil, nil, failure("%v", err)
	}
	store, err := control.OpenStore(dataDir)
	if err != nil {
		return nil, nil, failure("%v", err)
	}
	ctl := &control.Server{Store: store, CA: ca, TLS: tlsConf, DataURL: o.Advertise, Encrypted: encrypted, CRLFile: pki.Paths(dataDir).CRL, DataDir: dataDir,
		HeartbeatInterval: o.HeartbeatInterval, HeartbeatTimeout: o.HeartbeatTimeout}
	return ctl, func() { store.Close() }, nil
}

func serverPassphraseCommand() *cli.Command {
	return &cli.Command{
		Name:  "passphrase",
		Usage: "replace the registration passphrase (the old one stops working) and show the new one once",
		Description: "Asks the running configuration server for a new registration passphrase. Machines registered\n" +
			"before keep their certificates; only new registrations need the new passphrase.\n\n" +
			"Example:\n   lifeboat server passphrase --data-dir /var/lib/lifeboat/server > /root/lifeboat.pass",
		Flags:        siteFlags(),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			var p control.PassphraseReply
			if err := siteCall(c, http.MethodPost, "/passphrase", nil, &p); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, p.Passphrase)
			return nil
		},
	}
}

// psVolumes reports a process server's volumes and spool as its
// heartbeats carry them.
func psVolumes(srv *pipeline.Server) func() ([]control.PSVolume, int64, int64) {
	return func() ([]control.PSVolume, int64, int64) {
		m := srv.Metrics()
		vols := make([]control.PSVolume, 0, len(m.Volumes))
		for _, v := range m.Volumes {
			vols = append(vols, control.PSVolume{Machine: v.Info.Machine, Volume: v.Info.Name, ReceivedBytes: v.ReceivedBytes, LatestPoint: v.LatestPoint})
		}
		return vols, m.SpoolBytes, m.SpoolQuota
	}
}
