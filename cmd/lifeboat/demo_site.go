package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"lifeboat/failback"
	"lifeboat/failover"
	"lifeboat/nbd"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets/file"
	"lifeboat/tracker"
)

// demoVolumeName is the protected volume's name: its NBD export and its
// name at the recovery site.
const demoVolumeName = "demo"

// demoSite is everything `lifeboat demo` runs in one process: a recovery
// site (process server with a file target) and a protected server (an
// agent's volume, NBD front end and shipper), all on 127.0.0.1.
type demoSite struct {
	log   *slog.Logger
	quiet *slog.Logger // errors only (the shipper's)

	serverDir string // lifeboat server --data-dir: pki/, spool/, replicas/
	agentDir  string // demo.img, journal/demo, demo-agent.crt|key, ca.crt
	masterDir string // lifeboat master-target --data-dir: pki/, spool/, disks/
	volPath   string

	// Recovery site.
	target    *file.Target
	site      *failover.Site // process server and recovery volumes (NBD)
	url       string         // https://127.0.0.1:PORT
	srvCancel context.CancelFunc
	srvDone   chan error
	admin     *http.Client // admin identity, for the points API

	// Protected server.
	vol        *tracker.Volume
	nbdSrv     *nbd.Server
	nbdAddr    string
	nbdDone    chan error
	agentHTTP  *http.Client
	ship       *pipeline.Shipper
	shipCancel context.CancelFunc
	shipWG     sync.WaitGroup

	// The protected server's master target (reprotect and failback).
	master       *failback.MasterTarget
	masterURL    string
	masterCancel context.CancelFunc
	masterDone   chan error
}

// startServer creates the site's CA and starts the process server on an
// ephemeral port.
func (d *demoSite) startServer(ctx context.Context) error {
	if _, err := pki.Init(d.serverDir, nil); err != nil {
		return fmt.Errorf("create the site CA: %w", err)
	}
	tlsConf, err := pki.ServerTLS(d.serverDir)
	if err != nil {
		return err
	}
	replicas := filepath.Join(d.serverDir, "replicas")
	if err := os.MkdirAll(replicas, 0o755); err != nil {
		return err
	}
	d.target = file.New(replicas)
	d.target.Logger = d.log
	// As lifeboat server runs it, with recovery volumes over NBD.
	d.site = &failover.Site{DataDir: d.serverDir, Target: d.target, TLS: tlsConf, Logger: d.log,
		Recovery: true, NBDAddr: "127.0.0.1:0",
		// The demo's site holds well under 100 MiB: a machine with less
		// free space than a real site's reserve (1 GiB) still runs it.
		Configure: func(srv *pipeline.Server) { srv.MinFree = 128 << 20 }}
	if err := d.site.Open(ctx); err != nil {
		d.site = nil
		return fmt.Errorf("open the recovery site: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on 127.0.0.1: %w", err)
	}
	d.url = "https://" + ln.Addr().String()
	sctx, cancel := context.WithCancel(context.Background())
	d.srvCancel, d.srvDone = cancel, make(chan error, 1)
	go func() { d.srvDone <- d.site.Serve(sctx, ln) }()
	p := pki.Paths(d.serverDir)
	if d.admin, err = httpClient(p.AdminCert, p.AdminKey, p.CACert); err != nil {
		return err
	}
	return nil
}

// startAgent issues the agent's certificate (the first time), opens the
// volume through tracker.Volume, serves it over NBD and starts its shipper.
func (d *demoSite) startAgent(ctx context.Context) error {
	if d.agentHTTP == nil { // a restart keeps the identity
		if err := d.agentIdentity(); err != nil {
			return err
		}
	}
	v := tracker.NewVolume(d.volPath, d.journalDir())
	v.InitialSync = true // a new volume: the replica has nothing yet, copy it whole (holes skipped) first
	v.SegmentAge = 500 * time.Millisecond
	v.SegmentBytes = 4 << 20
	v.JournalQuota = 1 << 30
	v.CopyMemory = tracker.DefaultCopyMemory // the copy is shipped from memory, not journaled first
	v.Logger = d.log.With("volume", demoVolumeName)
	if err := v.Open(ctx); err != nil {
		return fmt.Errorf("open the demo volume: %w", err)
	}
	d.vol = v
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on 127.0.0.1: %w", err)
	}
	d.nbdAddr = ln.Addr().String()
	d.nbdSrv = nbd.NewServer()
	d.nbdSrv.Logger = d.log
	d.nbdSrv.Exports = []nbd.Export{{Name: demoVolumeName, Description: d.volPath, Backend: nbd.WithExtents(v, v.Extents)}}
	d.nbdDone = make(chan error, 1)
	go func() { d.nbdDone <- d.nbdSrv.Serve(context.Background(), ln) }()

	d.ship = pipeline.NewShipper(v, demoVolumeName, d.url, d.agentHTTP)
	d.ship.TagInterval = pipeline.MinTagInterval
	d.ship.MaxBackoff = 2 * time.Second
	// The demo shows the agent's side of the failover itself; real
	// errors still reach the log.
	d.ship.Logger = d.quiet
	sctx, cancel := context.WithCancel(context.Background())
	d.shipCancel = cancel
	d.shipWG.Add(1)
	go func() {
		defer d.shipWG.Done()
		if err := d.ship.Run(sctx); err != nil {
			d.log.Error("shipper stopped", "err", err)
		}
	}()
	return nil
}

// stopAgent stops the protected server in order: shipper, NBD, volume
// (seals the journal, releases its lock). startAgent starts it again.
func (d *demoSite) stopAgent() error {
	var errs []error
	if d.shipCancel != nil {
		d.shipCancel()
		d.shipWG.Wait()
		d.shipCancel = nil
	}
	if d.nbdSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := d.nbdSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop the NBD server: %w", err))
		}
		cancel()
		if err := <-d.nbdDone; err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			errs = append(errs, fmt.Errorf("NBD server: %w", err))
		}
		d.nbdSrv = nil
	}
	if d.vol != nil {
		if err := d.vol.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close the demo volume: %w", err))
		}
		d.vol = nil
	}
	return errors.Join(errs...)
}

// stop shuts everything down in order: the agent, the master target, then
// the process server and its target.
func (d *demoSite) stop() error {
	errs := []error{d.stopAgent(), d.stopMaster()}
	for _, c := range []*http.Client{d.agentHTTP, d.admin} {
		if c != nil {
			c.CloseIdleConnections()
		}
	}
	if d.srvCancel != nil {
		d.srvCancel()
		if err := <-d.srvDone; err != nil {
			errs = append(errs, fmt.Errorf("process server: %w", err))
		}
	}
	if d.site != nil {
		errs = append(errs, d.site.Close())
	}
	if d.target != nil {
		errs = append(errs, d.target.Close())
	}
	return errors.Join(errs...)
}

// points lists the volume's recovery points through the admin API, as
// `lifeboat points list` does.
func (d *demoSite) points(ctx context.Context) ([]pipeline.Point, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var pts []pipeline.Point
	if err := pipeline.Call(ctx, d.admin, http.MethodGet, d.url+"/v1/volumes/"+demoVolumeName+"/points", nil, &pts); err != nil {
		return nil, fmt.Errorf("points: %w", err)
	}
	return pts, nil
}

// waitPoint polls the points list until a point with Seq >= seq exists and
// returns the first such point and when it was seen.
func (d *demoSite) waitPoint(ctx context.Context, seq uint64, timeout time.Duration) (pipeline.Point, time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		pts, err := d.points(ctx)
		if err != nil && ctx.Err() != nil {
			return pipeline.Point{}, time.Time{}, ctx.Err()
		}
		for _, p := range pts {
			if p.Seq >= seq {
				return p, time.Now(), nil
			}
		}
		if time.Now().After(deadline) {
			st := d.ship.Status()
			return pipeline.Point{}, time.Time{}, failure("no recovery point at or after seq %d within %v (last error: %v; shipper: connected %v, acked seq %d, last tag %d)",
				seq, timeout, err, st.Connected, st.AckedSeq, st.LastTagSeq)
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return pipeline.Point{}, time.Time{}, ctx.Err()
		}
	}
}

// settled hashes the volume, which nothing writes now, and waits for the
// point that holds it: the first at or after the record before NextSeq
// (the last write, or a tag after it).
func (d *demoSite) settled(ctx context.Context) (string, pipeline.Point, time.Time, error) {
	next := d.vol.Status().NextSeq
	h, err := hashFile(d.volPath)
	if err != nil {
		return "", pipeline.Point{}, time.Time{}, err
	}
	p, seen, err := d.waitPoint(ctx, next-1, demoPointTimeout)
	return h, p, seen, err
}
