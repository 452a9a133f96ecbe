package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"

	"lifeboat/failover"
	"lifeboat/nbd"
	"lifeboat/pipeline"
)

// demoRecovery is what one recovery step of the demo measured.
type demoRecovery struct {
	kind      string
	point     uint64
	export    string        // the NBD export on the site
	started   time.Duration // the request, from sending it to its answer
	firstRead time.Duration // from sending the request to the first NBD read returned
	readAll   time.Duration // reading the whole volume over NBD
	sum       string
}

// recover starts a recovery volume of the latest point (POST path, as
// lifeboat test-failover start / failover start do), reads it whole over
// NBD with lifeboat's own client, and compares it with the source, which
// nothing wrote since the last round.
func (r *demoRun) recover(ctx context.Context, path string) (demoRecovery, error) {
	d, w := r.site, r.w
	want, err := hashFile(d.volPath)
	if err != nil {
		return demoRecovery{}, err
	}
	start := time.Now()
	var st pipeline.RecoveryState
	if err := pipeline.Call(ctx, d.admin, http.MethodPost, d.url+"/v1/volumes/"+demoVolumeName+path,
		failover.Request{Point: failover.PointLatest}, &st); err != nil {
		return demoRecovery{}, err
	}
	rec := demoRecovery{kind: st.Kind, point: st.Point.Seq, export: st.Export, started: time.Since(start)}
	c, err := nbd.Dial(ctx, d.site.NBDListenAddr().String(), st.Export)
	if err != nil {
		return rec, err
	}
	defer c.Close()
	c.Timeout = time.Minute
	buf := make([]byte, 1<<20)
	if _, err := c.ReadAt(buf[:4096], 0); err != nil {
		return rec, fmt.Errorf("first read of %s: %w", st.Export, err)
	}
	rec.firstRead = time.Since(start)
	h := sha256.New()
	readStart := time.Now()
	for off := int64(0); off < c.Size(); off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), c.Size()-off)]
		if _, err := c.ReadAt(b, off); err != nil {
			return rec, fmt.Errorf("read %s at %d: %w", st.Export, off, err)
		}
		h.Write(b)
	}
	rec.readAll = time.Since(readStart)
	rec.sum = hex.EncodeToString(h.Sum(nil))
	fmt.Fprintf(w, "      %s of point seq %d served as %s in %s; first NBD read returned after %s\n", st.Kind, st.Point.Seq,
		st.URL, rec.started.Round(time.Millisecond), rec.firstRead.Round(time.Millisecond))
	fmt.Fprintf(w, "      read %s over NBD in %s: sha256 %s…\n", humanBytes(uint64(c.Size())), rec.readAll.Round(time.Millisecond), rec.sum[:16])
	if rec.sum != want {
		return rec, failure("the %s volume (sha256 %s) differs from the source (%s)", st.Kind, rec.sum, want)
	}
	fmt.Fprintf(w, "      = the source volume: MATCH\n")
	return rec, c.Close()
}

// testFailover is step 7: a test failover of the latest point, read and
// compared, then cleaned up; replication goes on meanwhile.
func (r *demoRun) testFailover(ctx context.Context) error {
	rec, err := r.recover(ctx, "/test-failover")
	if err != nil {
		return err
	}
	start := time.Now()
	if err := pipeline.Call(ctx, r.site.admin, http.MethodDelete, r.site.url+"/v1/volumes/"+demoVolumeName+"/test-failover", nil, nil); err != nil {
		return fmt.Errorf("test failover cleanup: %w", err)
	}
	fmt.Fprintf(r.w, "      cleaned up in %s: export and overlay gone, the replica and its points never saw the test's writes\n",
		time.Since(start).Round(time.Millisecond))
	r.recovery = append(r.recovery, rec)
	return nil
}

// failover is step 8: a failover to the latest point, read and compared;
// the agent is told and stops shipping.
func (r *demoRun) failover(ctx context.Context) error {
	rec, err := r.recover(ctx, "/failover")
	if err != nil {
		return err
	}
	r.recovery = append(r.recovery, rec)
	deadline := time.Now().Add(30 * time.Second)
	for r.site.ship.Status().Stopped == "" {
		if time.Now().After(deadline) {
			return failure("the agent was not told of the failover within 30s")
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
	fmt.Fprintf(r.w, "      the agent was told and stopped shipping: %s\n", r.site.ship.Status().Stopped)
	return nil
}
