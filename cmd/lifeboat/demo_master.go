package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"lifeboat/failback"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// journalDir is the agent's journal directory of the demo volume.
func (d *demoSite) journalDir() string {
	return filepath.Join(d.agentDir, "journal", demoVolumeName)
}

// agentIdentity issues the agent's certificate from the site's CA, as
// 'lifeboat certs issue --role agent' does, and makes its HTTP client.
func (d *demoSite) agentIdentity() error {
	ca, err := pki.Load(d.serverDir)
	if err != nil {
		return err
	}
	id, err := ca.Issue("demo-agent", pki.RoleAgent, nil, 24*time.Hour)
	if err != nil {
		return err
	}
	if err := id.Write(d.agentDir, "demo-agent"); err != nil {
		return err
	}
	d.agentHTTP, err = httpClient(filepath.Join(d.agentDir, "demo-agent.crt"), filepath.Join(d.agentDir, "demo-agent.key"),
		filepath.Join(d.agentDir, "ca.crt"))
	return err
}

// startMaster runs the primary side of reverse replication, as
// 'lifeboat master-target' does beside the primary disk with the agent
// stopped: its server certificate comes from the site's CA (as 'lifeboat
// certs issue --role server --name master --host 127.0.0.1', copied to
// DATA-DIR/pki as server.crt and server.key), and it listens on an
// ephemeral port of 127.0.0.1.
func (d *demoSite) startMaster(ctx context.Context) error {
	ca, err := pki.Load(d.serverDir)
	if err != nil {
		return err
	}
	id, err := ca.Issue("master", pki.RoleServer, []string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("the master target's certificate: %w", err)
	}
	if err := id.Write(pki.Paths(d.masterDir).Dir, "server"); err != nil {
		return fmt.Errorf("the master target's certificate: %w", err)
	}
	m := &failback.MasterTarget{DataDir: d.masterDir, Logger: d.log,
		Volumes: []failback.Primary{{Name: demoVolumeName, Path: d.volPath, JournalDir: d.journalDir()}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on 127.0.0.1: %w", err)
	}
	if err := m.Open(ctx); err != nil {
		ln.Close()
		m.Close()
		return fmt.Errorf("open the master target: %w", err)
	}
	d.master, d.masterURL = m, "https://"+ln.Addr().String()
	sctx, cancel := context.WithCancel(context.Background())
	d.masterCancel, d.masterDone = cancel, make(chan error, 1)
	go func() { d.masterDone <- m.Serve(sctx, ln) }()
	return nil
}

// stopMaster stops the master target and releases the journal lock it
// holds, so that the agent can start again.
func (d *demoSite) stopMaster() error {
	if d.master == nil {
		return nil
	}
	var errs []error
	d.masterCancel()
	if err := <-d.masterDone; err != nil {
		errs = append(errs, fmt.Errorf("master target: %w", err))
	}
	if err := d.master.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close the master target: %w", err))
	}
	d.master = nil
	return errors.Join(errs...)
}

// recoveryCall sends an admin request of the recovery API for the demo
// volume (path "/reprotect", "/failback") and returns its answer.
func (d *demoSite) recoveryCall(ctx context.Context, path string, req any) (pipeline.RecoveryState, error) {
	var st pipeline.RecoveryState
	err := pipeline.Call(ctx, d.admin, http.MethodPost, d.url+"/v1/volumes/"+demoVolumeName+path, req, &st)
	return st, err
}

// failoverState returns the demo volume's failover as GET /v1/recovery
// (as 'lifeboat recovery list') shows it; nil when there is none.
func (d *demoSite) failoverState(ctx context.Context) (*pipeline.RecoveryState, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var list []pipeline.RecoveryState
	if err := pipeline.Call(ctx, d.admin, http.MethodGet, d.url+"/v1/recovery", nil, &list); err != nil {
		return nil, fmt.Errorf("recovery list: %w", err)
	}
	for i, st := range list {
		if st.Kind == pipeline.RecoveryFailover && st.Volume.Name == demoVolumeName {
			return &list[i], nil
		}
	}
	return nil, nil
}

// firstSync polls GET /v1/recovery until the reverse replication's first
// sync is over and everything journaled is acknowledged.
func (r *demoRun) firstSync(ctx context.Context) (*pipeline.ShipperStatus, error) {
	deadline := time.Now().Add(demoInitialTimeout)
	for {
		st, err := r.site.failoverState(ctx)
		var sh *pipeline.ShipperStatus
		if err == nil && st != nil && st.Reprotect != nil {
			sh = st.Reprotect.Shipper
		}
		if sh != nil && sh.Tracker.Resync == "" && sh.Tracker.NextSeq-1 == sh.AckedSeq {
			return sh, nil
		}
		if time.Now().After(deadline) {
			last := "no status"
			if sh != nil {
				last = fmt.Sprintf("connected %v, acked seq %d of %d, last error %q", sh.Connected, sh.AckedSeq, sh.Tracker.NextSeq-1, sh.LastError)
			}
			return nil, failure("the reprotect's first sync did not finish within %v (%v; %s)", demoInitialTimeout, err, last)
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
}

// sleepCtx sleeps for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
