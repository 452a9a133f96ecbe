package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/fusefs"
	"lifeboat/internal/metrics"
	"lifeboat/nbd"
	"lifeboat/pipeline"
	"lifeboat/tracker"
)

// A managed agent protects what the configuration server tells it to:
// it starts with only the server's URL and its identity (from 'lifeboat
// agent register'), sends a heartbeat with each volume's state and gets
// its configuration back. The last configuration is kept in
// JOURNAL-DIR/managed.json, so that after a restart the volumes are served
// and journaled at once, even while the configuration server is down.

// managedFile is the agent's saved configuration.
type managedFile struct {
	Config control.AgentConfig `json:"config"`
	// ResyncDone is the last resync request acted on, by volume.
	ResyncDone map[string]uint64 `json:"resync_done"`
	// Unprotected are the volumes whose journal directory was left by an
	// unprotect (or a change of path or size): protected again, their
	// journal's state is not the device's and they are resynced in full.
	Unprotected map[string]bool `json:"unprotected,omitempty"`
}

// managedVolume is a volume the agent protects for the site.
type managedVolume struct {
	cfg     control.VolumeConfig
	vol     *tracker.Volume
	ship    *pipeline.Shipper // the running or last shipper; nil before the first
	stopRun func()            // stops the running shipper; nil when none runs
	// pending, while not "", says why an unprotect waits: the machine
	// still uses the volume, so it stays open (and served where it is in
	// use) and the removal is tried again at each reconcile.
	pending string
	// nbdGone and fuseGone say that the front end no longer serves it.
	nbdGone, fuseGone bool
}

type managedAgent struct {
	o       agentOptions
	log     *slog.Logger
	control string
	client  *http.Client
	out     io.Writer
	nbd     *nbd.Server
	srvDone chan error
	mount   *fusefs.Mount
	vols    map[string]*managedVolume
	errs    map[string]string // volumes that could not be opened, and why
	saved   managedFile
	// refused says why the site refuses this machine; "" while it does not.
	refused string
	// savedJSON is what managed.json holds.
	savedJSON []byte
	// metricVols is what /metrics shows, replaced after each change.
	metricVols atomic.Pointer[[]metrics.AgentVolume]
}

func (a *managedAgent) savedPath() string { return filepath.Join(a.o.JournalDir, "managed.json") }

// runManagedAgent serves until ctx is cancelled or a front end fails.
func runManagedAgent(ctx context.Context, out io.Writer, o agentOptions, id agentIdentity) error {
	client, err := httpClient(id.Cert, id.Key, id.CA)
	if err != nil {
		return failure("%v; register again with 'lifeboat agent register'", err)
	}
	if err := os.MkdirAll(o.JournalDir, 0o700); err != nil {
		return failure("--journal-dir: %v", err)
	}
	a := newManagedAgent(o, slog.Default().With("machine", id.Name), id.Server, client, out)
	if err := a.load(); err != nil {
		return err
	}
	if err := a.startFrontEnds(ctx); err != nil {
		a.stop()
		return err
	}
	fmt.Fprintf(out, "lifeboat agent %s managed by %s\n", id.Name, id.Server)
	a.reconcile(ctx, a.saved.Config) // what it protected before, at once
	stopMetrics, err := startMetrics(out, o.MetricsListen, &metrics.AgentCollector{Current: func() []metrics.AgentVolume {
		if p := a.metricVols.Load(); p != nil {
			return *p
		}
		return nil
	}})
	if err != nil {
		a.stop()
		return err
	}
	err = a.loop(ctx)
	stopMetrics()
	if serr := a.stop(); serr != nil {
		return errors.Join(err, serr)
	}
	if err == nil {
		fmt.Fprintln(out, "lifeboat agent stopped cleanly: journal sealed, volumes flushed")
	}
	return err
}

func newManagedAgent(o agentOptions, log *slog.Logger, server string, client *http.Client, out io.Writer) *managedAgent {
	return &managedAgent{o: o, log: log, control: server, client: client, out: out,
		vols: map[string]*managedVolume{}, errs: map[string]string{}, saved: managedFile{ResyncDone: map[string]uint64{}, Unprotected: map[string]bool{}}}
}

// load reads the saved configuration, if any.
func (a *managedAgent) load() error {
	b, err := os.ReadFile(a.savedPath())
	if err != nil {
		return nil
	}
	if err := json.Unmarshal(b, &a.saved); err != nil {
		return failure("%s: %v; move it away to start from the configuration server's", a.savedPath(), err)
	}
	if a.saved.ResyncDone == nil {
		a.saved.ResyncDone = map[string]uint64{}
	}
	if a.saved.Unprotected == nil {
		a.saved.Unprotected = map[string]bool{}
	}
	return nil
}

func (a *managedAgent) startFrontEnds(ctx context.Context) error {
	if len(a.o.NBD) > 0 {
		a.nbd = nbd.NewServer()
		a.nbd.Logger, a.nbd.Dynamic = a.log, true // exports come and go with the site's configuration
		a.nbd.MaxConnections, a.nbd.MaxInFlightBytes = a.o.NBDMaxConnections, a.o.NBDMaxInFlight
		a.srvDone = make(chan error, len(a.o.NBD))
		for _, addr := range a.o.NBD {
			ln, err := nbd.Listen(addr, a.log)
			if err != nil {
				return usageError("--nbd %s: %v", addr, err)
			}
			go func() { a.srvDone <- a.nbd.Serve(ctx, ln) }()
			fmt.Fprintf(a.out, "serving NBD at %s (exports: the protected volumes' names)\n", ln.Addr())
		}
	}
	if a.o.FuseMount != "" {
		if err := os.MkdirAll(a.o.FuseMount, 0o755); err != nil {
			return usageError("--fuse-mount: %v", err)
		}
		a.mount = &fusefs.Mount{Dir: a.o.FuseMount, Logger: a.log, Dynamic: true} // files come and go with the configuration
		if err := a.mount.Mount(ctx); err != nil {
			a.mount = nil
			return fmt.Errorf("--fuse-mount %s: %w", a.o.FuseMount, err)
		}
	}
	return nil
}

// loop sends heartbeats and applies the answers until ctx is done.
func (a *managedAgent) loop(ctx context.Context) error {
	interval := control.DefaultHeartbeatInterval
	var fuseGone <-chan struct{}
	if a.mount != nil {
		fuseGone = a.mount.Done()
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping: signal received; draining requests, flushing, sealing the journal")
			return nil
		case err := <-a.srvDone:
			return fmt.Errorf("NBD server stopped: %w", err)
		case <-fuseGone:
			return errors.New("the FUSE mount was unmounted from outside; stopping")
		case <-timer.C:
		}
		cfg, err := a.heartbeat(ctx)
		next := interval
		var ce *control.CallError
		refused := errors.As(err, &ce) && (ce.Status == http.StatusUnauthorized || ce.Status == http.StatusForbidden)
		a.refused = ""
		if refused {
			// The data ports refuse this machine too: stop shipping (the
			// journal and the dirty bitmap keep every write) and ask again
			// only now and then, instead of filling the site's logs.
			for _, mv := range a.vols {
				a.stopShipper(mv)
			}
			next = max(interval, refusedInterval)
			a.refused = "the configuration server refuses this machine (removed, or its certificate revoked: " + ce.Message +
				"); not shipping; the journal keeps every write; register it again with 'lifeboat agent register'"
		}
		switch {
		case err != nil && ctx.Err() == nil:
			if err.Error() != lastErr {
				if refused {
					// Not an outage: the site removed this machine or revoked its
					// certificate, and will not take it back by itself.
					a.log.Error("the configuration server refuses this machine (removed, or its certificate revoked); "+
						"serving and journaling the volumes of the last configuration, not shipping them; asking again every minute; register it again with 'lifeboat agent register'",
						"server", a.control, "status", ce.Status, "err", err)
				} else {
					a.log.Warn("configuration server unreachable; protecting the volumes of the last configuration meanwhile",
						"server", a.control, "err", err)
				}
			}
			lastErr = err.Error()
		case err == nil:
			if lastErr != "" {
				a.log.Info("configuration server reached again", "server", a.control)
			}
			lastErr = ""
			a.reconcile(ctx, cfg)
			if cfg.HeartbeatIntervalMS > 0 {
				interval = time.Duration(cfg.HeartbeatIntervalMS) * time.Millisecond
			}
		}
		a.writeStatus()
		if err == nil {
			next = interval
		}
		timer.Reset(next)
	}
}

// refusedInterval is how often an agent the site refuses asks again.
const refusedInterval = time.Minute

func (a *managedAgent) heartbeat(ctx context.Context) (control.AgentConfig, error) {
	hb := control.Heartbeat{Version: version, Volumes: a.reports()}
	var cfg control.AgentConfig
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := control.Call(cctx, a.client, http.MethodPost, a.control+"/v1/agent/heartbeat", hb, &cfg)
	return cfg, err
}

// reports are the volumes' states for a heartbeat.
func (a *managedAgent) reports() []control.VolumeReport {
	reps := []control.VolumeReport{}
	for name, e := range a.errs {
		reps = append(reps, control.VolumeReport{Name: name, Error: e})
	}
	for name, mv := range a.vols {
		r := control.VolumeReport{Name: name, Paused: mv.stopRun == nil, ResyncDone: a.saved.ResyncDone[name], Error: mv.pending}
		st := pipeline.ShipperStatus{Volume: name, Tracker: mv.vol.Status()}
		if mv.ship != nil {
			st = mv.ship.Status()
		}
		r.Shipper = &st
		reps = append(reps, r)
	}
	return reps
}

// writeStatus keeps JOURNAL-DIR/NAME/status.json for 'lifeboat status
// --journal-dir' on this machine.
func (a *managedAgent) writeStatus() {
	for name, mv := range a.vols {
		if mv.ship != nil {
			st := mv.ship.Status()
			if a.refused != "" {
				st.Stopped = a.refused
			}
			writeStatus(filepath.Join(a.o.JournalDir, name, statusFileName), st)
		}
	}
}

// reconcile makes the running volumes and shippers what cfg says.
func (a *managedAgent) reconcile(ctx context.Context, cfg control.AgentConfig) {
	want := map[string]control.VolumeConfig{}
	for _, vc := range cfg.Volumes {
		want[vc.Name] = vc
	}
	// What was protected before this reconcile: at start-up, the saved
	// configuration itself, so that a restart is not a protect again.
	prev := map[string]control.VolumeConfig{}
	for _, vc := range a.saved.Config.Volumes {
		prev[vc.Name] = vc
	}
	for name, mv := range a.vols {
		vc, ok := want[name]
		switch {
		case !ok || vc.Path != mv.cfg.Path || vc.Size != mv.cfg.Size:
			a.remove(ctx, name) // or try again
		case mv.pending != "":
			mv.pending = "" // protected again before it could be removed: it never stopped being journaled
			a.log.Info("volume protected again while its unprotect was pending; resuming", "volume", name)
		}
	}
	for name := range a.errs {
		if _, ok := want[name]; !ok {
			delete(a.errs, name)
		}
	}
	for _, vc := range cfg.Volumes {
		mv := a.vols[vc.Name]
		if mv != nil && mv.pending != "" {
			continue // the name's old volume is still in use: the new one waits
		}
		if mv != nil {
			a.serveAgain(mv)
		}
		if mv == nil {
			var err error
			if mv, err = a.add(ctx, vc, a.protectedAgain(vc, prev)); err != nil {
				if a.errs[vc.Name] != err.Error() {
					a.log.Error("cannot protect volume", "volume", vc.Name, "path", vc.Path, "err", err)
				}
				a.errs[vc.Name] = err.Error()
				continue
			}
			delete(a.errs, vc.Name)
			if _, ok := a.saved.ResyncDone[vc.Name]; !ok {
				a.saved.ResyncDone[vc.Name] = vc.Resync // a new volume is copied whole anyway
			}
		}
		if vc.Resync > a.saved.ResyncDone[vc.Name] {
			a.stopShipper(mv)
			kind := "of its dirty regions"
			if vc.ResyncFull {
				kind = "of every region"
			}
			if err := pipeline.Resync(mv.vol, vc.ResyncFull, "resync requested by the site"); err != nil {
				a.log.Error("requested resync failed", "volume", vc.Name, "err", err)
			} else {
				a.log.Info("resync "+kind+" requested by the site", "volume", vc.Name)
				a.saved.ResyncDone[vc.Name] = vc.Resync
			}
		}
		if mv.stopRun != nil && (vc.ProcessServer != mv.cfg.ProcessServer || vc.TagInterval != mv.cfg.TagInterval || vc.Compression != mv.cfg.Compression) {
			a.stopShipper(mv) // started again below with the new settings
		}
		mv.cfg = vc
		switch {
		case vc.Paused && mv.stopRun != nil:
			a.stopShipper(mv)
			a.log.Info("replication paused by the site; writes are journaled and dirty-tracked meanwhile", "volume", vc.Name)
		case !vc.Paused && mv.stopRun == nil:
			a.startShipper(ctx, mv)
		}
	}
	a.saved.Config = cfg
	a.save()
	var mv []metrics.AgentVolume
	for name, v := range a.vols {
		mv = append(mv, metrics.AgentVolume{Name: name, Volume: v.vol, Shipper: v.ship})
	}
	a.metricVols.Store(&mv)
}

// save writes the configuration and resync state durably when they
// changed.
func (a *managedAgent) save() {
	b, err := json.MarshalIndent(a.saved, "", "  ")
	if err != nil || bytes.Equal(b, a.savedJSON) {
		return
	}
	if err = writeFileAtomic(a.savedPath(), append(b, '\n'), 0o600); err == nil {
		a.savedJSON = b
	}
	if err != nil {
		a.log.Error("could not save the configuration server's configuration", "file", a.savedPath(), "err", err)
	}
}

// protectedAgain says why a volume about to be opened needs a full resync
// first, or "": its journal directory holds the state of an earlier
// protection (unprotected since, or of another path or size), which says
// nothing of what was written to the device meanwhile. prev is the
// configuration before this reconcile.
func (a *managedAgent) protectedAgain(vc control.VolumeConfig, prev map[string]control.VolumeConfig) string {
	if a.saved.Unprotected[vc.Name] {
		return "unprotected by the site since it was last protected"
	}
	if _, err := os.Stat(filepath.Join(a.o.JournalDir, vc.Name, trackerStateFile)); err != nil {
		return "" // a new journal: the tracker's initial sync copies every region
	}
	p, ok := prev[vc.Name]
	switch {
	case !ok:
		return "its journal directory holds the state of an earlier protection"
	case p.Path != vc.Path || p.Size != vc.Size:
		return fmt.Sprintf("its path or size changed (was %s, %d bytes)", p.Path, p.Size)
	}
	return ""
}

// trackerStateFile is the tracker's state in a journal directory: present
// once a volume was opened there.
const trackerStateFile = "volume.json"

// reprotectReason is why a volume protected again is resynced in full.
const reprotectReason = "protected again: what was written while it was not protected is unknown"

// add opens a volume and serves it. again, when not "", says why its
// journal is from an earlier protection: every region is resynced before
// anything is shipped.
func (a *managedAgent) add(ctx context.Context, vc control.VolumeConfig, again string) (*managedVolume, error) {
	spec := volumeSpec{Name: vc.Name, Path: vc.Path, Size: vc.Size}
	if err := spec.prepare(); err != nil {
		return nil, err
	}
	v := tracker.NewVolume(spec.Path, filepath.Join(a.o.JournalDir, spec.Name))
	v.SegmentAge = a.o.SegmentAge
	v.InitialSync = true
	r := a.o.Replication
	v.JournalQuota, v.CheckpointInterval, v.HotSetBytes, v.CopyMemory = r.JournalQuota, r.Checkpoint, r.HotSet, r.CopyMemory
	v.Logger = a.log.With("volume", spec.Name)
	if err := v.Open(ctx); err != nil {
		return nil, fmt.Errorf("volume %s: %w", spec.Name, err)
	}
	if again != "" {
		a.log.Warn("volume protected again: its journal is from an earlier protection; resyncing every region",
			"volume", spec.Name, "path", spec.Path, "why", again)
		if err := pipeline.Resync(v, true, reprotectReason); err != nil {
			v.Close()
			a.saved.Unprotected[spec.Name] = true // tried again at the next reconcile, even after a restart
			return nil, fmt.Errorf("volume %s: protected again, full resync: %w", spec.Name, err)
		}
	}
	delete(a.saved.Unprotected, spec.Name)
	if a.nbd != nil {
		if err := a.nbd.AddExport(nbd.Export{Name: spec.Name, Description: spec.Path, Backend: nbd.WithExtents(v, v.Extents)}); err != nil {
			v.Close()
			return nil, err
		}
	}
	if a.mount != nil {
		if err := a.mount.AddFile(fusefs.File{Name: spec.Name, Backend: v}); err != nil {
			if a.nbd != nil {
				a.nbd.RemoveExport(ctx, spec.Name)
			}
			v.Close()
			return nil, err
		}
	}
	a.log.Info("volume protected for the site", "volume", spec.Name, "path", spec.Path)
	mv := &managedVolume{cfg: vc, vol: v}
	a.vols[spec.Name] = mv
	return mv, nil
}

// remove stops protecting a volume: its journal directory stays. While
// the machine still uses it (a loop device over its FUSE file, NBD
// requests still running after the drain time), it only stops shipping:
// the volume stays open, journaled and served where it is in use, its
// heartbeat report says why, and the next reconcile tries again. Closing
// it under the machine would fail every later I/O with EIO. It returns
// true once the volume is closed.
func (a *managedAgent) remove(ctx context.Context, name string) bool {
	mv := a.vols[name]
	a.stopShipper(mv)
	var inUse []string
	if a.nbd != nil && !mv.nbdGone {
		rctx, cancel := context.WithTimeout(ctx, a.o.DrainTime)
		err := a.nbd.RemoveExport(rctx, name)
		cancel()
		// The export is out of the table either way: no new client opens
		// it. After a timeout, requests may still be running in the
		// volume: it stays open until the next reconcile at least.
		mv.nbdGone = true
		switch {
		case err == nil || errors.Is(err, nbd.ErrNoSuchExport):
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			inUse = append(inUse, fmt.Sprintf("NBD requests still running after %v: %v", a.o.DrainTime, err))
		default:
			a.log.Warn("NBD export not removed cleanly", "volume", name, "err", err)
		}
	}
	if a.mount != nil && !mv.fuseGone {
		err := a.mount.RemoveFile(name)
		switch {
		case err == nil || errors.Is(err, fusefs.ErrNoSuchFile):
			mv.fuseGone = true
		case errors.Is(err, fusefs.ErrBusy):
			inUse = append(inUse, "FUSE file open: "+err.Error())
		default:
			mv.fuseGone = true
			a.log.Warn("FUSE file not removed cleanly", "volume", name, "err", err)
		}
	}
	if len(inUse) > 0 {
		msg := "unprotect pending: in use (" + strings.Join(inUse, "; ") +
			"); detach the loop device / disconnect the NBD client"
		if msg != mv.pending {
			a.log.Warn("volume still in use: not closed, not shipped; its unprotect is tried again at each heartbeat",
				"volume", name, "err", msg)
		}
		mv.pending = msg
		return false
	}
	if err := mv.vol.Flush(); err != nil {
		a.log.Error("flush", "volume", name, "err", err)
	}
	if err := mv.vol.Close(); err != nil {
		a.log.Error("close", "volume", name, "err", err)
	}
	delete(a.vols, name)
	delete(a.saved.ResyncDone, name)
	a.saved.Unprotected[name] = true
	a.log.Info("volume no longer protected (unprotected by the site); its journal directory is kept", "volume", name,
		"journal", filepath.Join(a.o.JournalDir, name))
	return true
}

// serveAgain serves again a volume whose unprotect was withdrawn after a
// front end had stopped serving it.
func (a *managedAgent) serveAgain(mv *managedVolume) {
	name := mv.cfg.Name
	if a.nbd != nil && mv.nbdGone {
		if err := a.nbd.AddExport(nbd.Export{Name: name, Description: mv.cfg.Path, Backend: nbd.WithExtents(mv.vol, mv.vol.Extents)}); err != nil {
			a.log.Error("cannot serve the volume over NBD again; tried again at the next heartbeat", "volume", name, "err", err)
		} else {
			mv.nbdGone = false
		}
	}
	if a.mount != nil && mv.fuseGone {
		if err := a.mount.AddFile(fusefs.File{Name: name, Backend: mv.vol}); err != nil {
			a.log.Error("cannot serve the volume as a FUSE file again; tried again at the next heartbeat", "volume", name, "err", err)
		} else {
			mv.fuseGone = false
		}
	}
}

func (a *managedAgent) startShipper(ctx context.Context, mv *managedVolume) {
	s := pipeline.NewShipper(mv.vol, mv.cfg.Name, mv.cfg.ProcessServer, a.client)
	s.TagInterval, s.Logger, s.MaxBackoff = mv.cfg.TagInterval.Duration(), a.log, a.o.Replication.MaxBackoff
	s.Compression = compressionLevel(mv.cfg.Compression)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("shipper stopped", "volume", s.Name, "err", err)
		}
	}()
	mv.ship, mv.stopRun = s, func() { cancel(); <-done }
}

func (a *managedAgent) stopShipper(mv *managedVolume) {
	if mv.stopRun != nil {
		mv.stopRun()
		mv.stopRun = nil
	}
}

// compressionLevel is a policy's compression as the shipper takes it.
func compressionLevel(name string) zstd.EncoderLevel {
	if name == "none" {
		return 0
	}
	if ok, l := zstd.EncoderLevelFromString(name); ok {
		return l
	}
	return zstd.SpeedFastest
}

// stop stops the shippers, drains the front ends and closes the volumes.
func (a *managedAgent) stop() error {
	var errs []error
	for _, mv := range a.vols {
		a.stopShipper(mv)
	}
	if a.nbd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), a.o.DrainTime)
		if err := a.nbd.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("drain NBD requests: %w", err))
		}
		cancel()
	}
	if a.mount != nil {
		if err := a.mount.Unmount(); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", a.mount.Dir, err))
		}
	}
	for name, mv := range a.vols {
		if err := mv.vol.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: flush: %w", name, err))
		}
		if err := mv.vol.Close(); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: close: %w", name, err))
		}
	}
	a.writeStatus()
	return errors.Join(errs...)
}

// managedAgentAction runs the agent for its configuration server: the
// site decides what is protected and where it is shipped.
func managedAgentAction(c *cli.Context, o agentOptions) error {
	for _, f := range []string{"server", "cert", "key", "ca", "tag-interval", "compression"} {
		if c.IsSet(f) {
			return usageError("--%s is set by the configuration server for a managed agent (no --volume); drop it, "+
				"or give --volume to run without a configuration server", f)
		}
	}
	id, err := loadIdentity(c.String("identity-dir"), c.String("control"))
	if err != nil {
		return err
	}
	r, err := parseReplicationOptions(c)
	if err != nil {
		return err
	}
	if r.MaxBackoff < time.Second {
		return usageError("--max-backoff %v: at least 1s", r.MaxBackoff)
	}
	o.Replication = r
	if len(o.NBD) == 0 && o.FuseMount == "" {
		return usageError("nothing to serve: give --nbd ADDR and/or --fuse-mount DIR")
	}
	return runManagedAgent(c.Context, c.App.Writer, o, id)
}
