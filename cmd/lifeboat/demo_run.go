package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"lifeboat/nbd"
	"lifeboat/pipeline"
)

// demoRun is one run of the demo and what it measured for the summary.
type demoRun struct {
	o     demoOptions
	w     io.Writer
	site  *demoSite
	dir   string
	start time.Time

	dataBytes    int64         // data on the volume before it was protected
	initialTime  time.Duration // from the shipper's start to the first point on the site
	initialBytes int64         // segment bytes shipped for the initial replication
	firstPoint   uint64
	hashes       map[uint64]string // sha256 of the source at the seq of each point the demo waited for
	labels       map[uint64]string // what each of those points follows
	rounds       []demoRound
	lags         []time.Duration // flush acknowledged → point seen on the site
	latest       uint64          // the latest point, verified
	latestHash   string
	recovery     []demoRecovery // the test failover and the failover
	fb           demoFailback   // the writes at the site, reprotect, failback, forward again
}

// demoSteps is how many steps the demo runs.
const demoSteps = 12

// Time allowed for the initial replication (and a reprotect's first sync)
// and for a point after a round.
const (
	demoInitialTimeout = 90 * time.Second
	demoPointTimeout   = 30 * time.Second
)

func (r *demoRun) run(ctx context.Context) error {
	d, w := r.site, r.w
	step := func(n int, title string) { fmt.Fprintf(w, "\n[%d/%d] %s\n", n, demoSteps, title) }

	step(1, "Recovery site")
	if err := d.startServer(ctx); err != nil {
		return err
	}
	fmt.Fprintf(w, "      site CA          %s/pki (as 'lifeboat server init' creates it)\n", d.serverDir)
	fmt.Fprintf(w, "      process server   %s (TLS 1.3, client certificates), file target %s/replicas\n", d.url, d.serverDir)

	step(2, "Protected server (the agent's side)")
	if err := os.MkdirAll(d.agentDir, 0o700); err != nil {
		return err
	}
	var err error
	if r.dataBytes, err = makeDemoVolume(d.volPath, r.o.Size, r.o.Seed); err != nil {
		return fmt.Errorf("create the demo volume: %w", err)
	}
	initialHash, err := hashFile(d.volPath)
	if err != nil {
		return err
	}
	if err := d.startAgent(ctx); err != nil {
		return err
	}
	shipStart := time.Now()
	fmt.Fprintf(w, "      volume %-9s %s: %s sparse, %s of data already on it\n", demoVolumeName, d.volPath,
		humanBytes(uint64(r.o.Size)), humanBytes(uint64(r.dataBytes)))
	fmt.Fprintf(w, "      NBD export       nbd://%s/%s (every write is journaled by tracker.Volume)\n", d.nbdAddr, demoVolumeName)
	fmt.Fprintf(w, "      shipper          → %s as demo-agent, zstd, a crash-consistent point every %v\n",
		d.url, d.ship.TagInterval)

	step(3, "Initial replication: the site has nothing of this volume yet; holes are skipped, data is copied")
	if err := r.initialReplication(ctx, shipStart); err != nil {
		return err
	}
	r.hashes[r.firstPoint], r.labels[r.firstPoint] = initialHash, "initial replication"

	step(4, "Workload through NBD (lifeboat's own client); after each round, writes pause until its point is on the site")
	if err := r.workload(ctx); err != nil {
		return err
	}

	step(5, "Recovery points on the site (GET /v1/volumes/demo/points, as 'lifeboat points list')")
	pts, err := d.points(ctx)
	if err != nil {
		return err
	}
	r.printPoints(pts)

	step(6, "Open the latest recovery point and compare it with the source at that tag")
	if err := r.verify(ctx); err != nil {
		return err
	}

	step(7, "Test failover of the latest point (as 'lifeboat test-failover start demo'): served over NBD, no copy")
	if err := r.testFailover(ctx); err != nil {
		return err
	}

	step(8, "Failover to the latest point (as 'lifeboat failover start demo'): the site serves the volume now")
	if err := r.failover(ctx); err != nil {
		return err
	}

	step(9, "Writes at the recovery site: random writes to the failover volume over NBD")
	if err := r.siteWrites(ctx); err != nil {
		return err
	}

	step(10, "Reprotect (as 'lifeboat reprotect demo --to MASTER --verify'): the failover volume replicates back to the primary")
	if err := r.reprotect(ctx); err != nil {
		return err
	}

	step(11, "Failback (as 'lifeboat failback demo'): the primary volume takes over again")
	if err := r.failback(ctx); err != nil {
		return err
	}

	step(12, "Forward replication again: the agent ships only its new writes")
	if err := r.forwardAgain(ctx); err != nil {
		return err
	}
	r.summary(len(pts))
	return nil
}

// initialReplication shows the shipper's resync progress until the first
// recovery point is on the site.
func (r *demoRun) initialReplication(ctx context.Context, start time.Time) error {
	d, w := r.site, r.w
	var walk pipeline.Progress // the resync's walk over the volume, as last seen
	var printedDone, printedShipped int64
	lastPrint := time.Time{}
	deadline := start.Add(demoInitialTimeout)
	for {
		st := d.ship.Status()
		if p := st.Resync; p != nil {
			walk = *p
		} else if walk.Total > 0 { // the walk is over; shipping goes on
			walk.Done, walk.ETASeconds = walk.Total, 0
		}
		pts, err := d.points(ctx)
		done := err == nil && len(pts) > 0
		if done && walk.Total == 0 { // the walk came and went between two looks
			el := time.Since(start).Seconds()
			walk = pipeline.Progress{Done: r.o.Size, Total: r.o.Size, RateBps: float64(r.o.Size) / el}
		}
		changed := walk.Done != printedDone || st.BytesRaw != printedShipped
		if walk.Total > 0 && changed && (done || time.Since(lastPrint) >= 250*time.Millisecond) {
			printProgress(w, walk, st.BytesRaw, r.dataBytes)
			printedDone, printedShipped, lastPrint = walk.Done, st.BytesRaw, time.Now()
		}
		if done {
			r.initialTime = time.Since(start)
			r.firstPoint = pts[0].Seq
			r.initialBytes = st.BytesRaw
			fmt.Fprintf(w, "      done in %s: %s of segments shipped, the holes were neither read nor sent\n",
				r.initialTime.Round(10*time.Millisecond), humanBytes(uint64(r.initialBytes)))
			fmt.Fprintf(w, "      first recovery point: seq %d %q\n", pts[0].Seq, pts[0].Name)
			return nil
		}
		if time.Now().After(deadline) {
			return failure("the initial replication did not finish within %v; shipper: connected %v, last error %q",
				demoInitialTimeout, st.Connected, st.LastError)
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// printProgress shows the walk over the volume (done/total, rate, ETA;
// holes count as walked) and the journal shipped so far.
func printProgress(w io.Writer, p pipeline.Progress, shipped, data int64) {
	pct := 0.0
	if p.Total > 0 {
		pct = 100 * float64(p.Done) / float64(p.Total)
	}
	eta := time.Duration(p.ETASeconds * float64(time.Second)).Round(100 * time.Millisecond)
	fmt.Fprintf(w, "      walked %9s of %s %4.0f%%  %9s/s  ETA %-5s  shipped %9s of ~%s of data\n", humanBytes(uint64(p.Done)),
		humanBytes(uint64(p.Total)), pct, humanBytes(uint64(p.RateBps)), eta, humanBytes(uint64(shipped)), humanBytes(uint64(data)))
}

// workload writes the rounds through NBD; after each it records the
// source's hash and waits for the recovery point that follows.
func (r *demoRun) workload(ctx context.Context) error {
	d, w := r.site, r.w
	c, err := nbd.Dial(ctx, d.nbdAddr, demoVolumeName)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Timeout = time.Minute
	rng := rand.New(rand.NewPCG(r.o.Seed, 0x2c))
	for i := 1; i <= r.o.Rounds; i++ {
		rs, err := writeRound(c, rng)
		if err != nil {
			return err
		}
		flushed := time.Now()
		rpo := d.ship.Status().RPOSeconds
		h, p, seen, err := d.settled(ctx)
		if err != nil {
			return err
		}
		r.rounds = append(r.rounds, rs)
		r.lags = append(r.lags, seen.Sub(flushed))
		r.hashes[p.Seq], r.labels[p.Seq] = h, fmt.Sprintf("round %d", i)
		fmt.Fprintf(w, "      round %d  %d writes (%s), trim + write-zeroes (%s), flush: done in %s (the flush %s)\n", i, rs.Writes,
			humanBytes(uint64(rs.Written)), humanBytes(uint64(rs.Zeroed)), rs.Took.Round(time.Millisecond), rs.Flush.Round(time.Millisecond))
		fmt.Fprintf(w, "               RPO at the flush %s; tag %+.2fs, point seq %d on the site %+.2fs; source sha256 %s…\n",
			rpoString(rpo), p.Time.Sub(flushed).Seconds(), p.Seq, seen.Sub(flushed).Seconds(), h[:16])
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("NBD disconnect: %w", err)
	}
	return nil
}
