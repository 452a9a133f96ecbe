package main

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"lifeboat/failover"
	"lifeboat/nbd"
	"lifeboat/pipeline"
)

// demoFailback is what steps 9 to 12 measured.
type demoFailback struct {
	forward      pipeline.ShipperStatus // the agent's shipper when it stopped for the reprotect
	siteWritten  int64                  // bytes written on the failover volume at the site
	differ       int64                  // bytes of 4 KiB blocks where it differs from the primary volume
	failoverHash string                 // sha256 of the failover volume after those writes
	candidates   int64                  // the reprotect's candidate bytes
	sentRaw      int64                  // the reprotect's first sync: segment bytes sent
	sentWire     int64                  // and on the wire
	reprotect    time.Duration          // from the request to the end of the first sync
	failback     time.Duration
	failbackSeq  uint64 // the site's point of the failback
	newWritten   int64  // written through the agent after the failback
	newShipped   int64  // what its shipper sent for them
	newPoint     uint64
}

// siteWrites is step 9: random writes to the failover volume over NBD,
// then the volume read back whole and compared, 4 KiB block by block, with
// the primary volume (which has not changed since the failover).
func (r *demoRun) siteWrites(ctx context.Context) error {
	d, fb := r.site, &r.fb
	addr, export := d.site.NBDListenAddr().String(), r.recovery[len(r.recovery)-1].export
	c, err := nbd.Dial(ctx, addr, export)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Timeout = time.Minute
	rng := rand.New(rand.NewPCG(r.o.Seed, 0x3d))
	start := time.Now()
	b := make([]byte, 64<<10)
	writes := 0
	for i := range 512 + 16 { // 512 blocks of 4 KiB, 16 of 64 KiB: random data, no dedupe, no compression
		n := int64(4096)
		if i >= 512 {
			n = 64 << 10
		}
		fillRandom(rng, b[:n])
		off := rng.Int64N((c.Size()-n)/4096+1) * 4096
		if _, err := c.WriteAt(b[:n], off); err != nil {
			return fmt.Errorf("NBD write of %d bytes at %d to %s: %w", n, off, export, err)
		}
		fb.siteWritten += n
		writes++
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("NBD flush of %s: %w", export, err)
	}
	fmt.Fprintf(r.w, "      %d writes (%s of random data) to nbd://%s/%s, flush: done in %s\n", writes,
		humanBytes(uint64(fb.siteWritten)), addr, export, time.Since(start).Round(time.Millisecond))
	if fb.failoverHash, fb.differ, err = compareVolume(c, d.volPath); err != nil {
		return err
	}
	fmt.Fprintf(r.w, "      failover volume read back over NBD: sha256 %s…; it differs from the primary volume in %s (4 KiB blocks)\n",
		fb.failoverHash[:16], humanBytes(uint64(fb.differ)))
	return c.Close()
}

// reprotect is step 10: the agent stops, the master target starts over its
// volume and journal, and the site replicates the failover volume back.
func (r *demoRun) reprotect(ctx context.Context) error {
	d, w, fb := r.site, r.w, &r.fb
	fb.forward = d.ship.Status()
	if err := d.stopAgent(); err != nil {
		return fmt.Errorf("stop the agent: %w", err)
	}
	fmt.Fprintf(w, "      agent stopped: shipper, NBD export and volume closed (journal sealed, its lock released)\n")
	if err := d.startMaster(ctx); err != nil {
		return err
	}
	fmt.Fprintf(w, "      master target    %s over agent/%s.img and its journal (as 'lifeboat master-target')\n",
		d.masterURL, demoVolumeName)
	fmt.Fprintf(w, "                       server certificate from the site's CA; only the site's identity may write\n")
	start := time.Now()
	st, err := d.recoveryCall(ctx, "/reprotect", failover.Request{To: d.masterURL, Verify: true})
	if err != nil {
		return fmt.Errorf("reprotect: %w", err)
	}
	if st.Reprotect == nil {
		return failure("reprotect answered no reprotect state; this is a bug: please report it with the output above")
	}
	fb.candidates = st.Reprotect.CandidateBytes
	fmt.Fprintf(w, "      POST /v1/volumes/%s/reprotect --verify: %s of candidate blocks, compared by hash with the primary's; %s rolled back\n",
		demoVolumeName, humanBytes(uint64(fb.candidates)), humanBytes(uint64(st.Reprotect.RolledBackBytes)))
	sh, err := r.firstSync(ctx)
	if err != nil {
		return err
	}
	fb.reprotect, fb.sentRaw, fb.sentWire = time.Since(start), sh.BytesRaw, sh.BytesWire
	fmt.Fprintf(w, "      first sync done in %s: sent %s (%s on the wire) of a %s volume (%.2f%%); %s differed\n",
		fb.reprotect.Round(time.Millisecond), humanBytes(uint64(fb.sentRaw)), humanBytes(uint64(fb.sentWire)),
		humanBytes(uint64(r.o.Size)), 100*float64(fb.sentRaw)/float64(r.o.Size), humanBytes(uint64(fb.differ)))
	if limit := fb.differ + fb.differ/10 + 1<<20; fb.sentRaw > limit {
		return failure("reprotect --verify sent %d bytes where %d bytes differ (bound %d); this is a bug: please report it with the output above",
			fb.sentRaw, fb.differ, limit)
	}
	return nil
}

// failback is step 11: the site switches back; the primary volume must
// hold the failover volume's bytes, and so must the site's new point.
func (r *demoRun) failback(ctx context.Context) error {
	d, w, fb := r.site, r.w, &r.fb
	start := time.Now()
	st, err := d.recoveryCall(ctx, "/failback", failover.Request{})
	if err != nil {
		return fmt.Errorf("failback: %w", err)
	}
	fb.failback = time.Since(start)
	if st.Reprotect == nil || st.Reprotect.Failback == nil {
		return failure("failback answered no failback plan; this is a bug: please report it with the output above")
	}
	plan := st.Reprotect.Failback
	fb.failbackSeq = plan.Seq
	fmt.Fprintf(w, "      POST /v1/volumes/%s/failback: failed back in %s; the site's point seq %d (generation %d), the agent goes on at seq %d\n",
		demoVolumeName, fb.failback.Round(time.Millisecond), plan.Seq, plan.Generation, plan.Seq+1)
	if f, err := d.failoverState(ctx); err != nil || f != nil {
		return failure("after the failback the failover volume is still listed (%v)", err)
	}
	got, err := hashFile(d.volPath)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "        primary volume sha256  %s\n        failover volume        %s (after the writes at the site)\n", got, fb.failoverHash)
	if got != fb.failoverHash {
		fmt.Fprintf(w, "      MISMATCH: the primary volume differs from the failover volume\n")
		return failure("after the failback the primary volume does not hold the failover volume's bytes; this is a bug: please report it with the output above")
	}
	fmt.Fprintf(w, "      MATCH: the primary volume holds exactly the failover volume's bytes\n")
	r.hashes[plan.Seq], r.labels[plan.Seq] = fb.failoverHash, "the failback"
	seq, sum, _, err := r.pointSum(ctx, strconv.FormatUint(plan.Seq, 10))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "      and the site's point of the failback, seq %d:\n", seq)
	return checkPoint(w, seq, sum, r.hashes, r.labels)
}

// forwardAgain is step 12: the master target stops, the agent starts on
// the journal the failback handed back, and ships only new writes.
func (r *demoRun) forwardAgain(ctx context.Context) error {
	d, w, fb := r.site, r.w, &r.fb
	if err := d.stopMaster(); err != nil {
		return fmt.Errorf("stop the master target: %w", err)
	}
	if err := d.startAgent(ctx); err != nil {
		return err
	}
	vs := d.vol.Status()
	fmt.Fprintf(w, "      master target stopped; agent started again: generation %d from seq %d, resync pending: %s\n",
		vs.Generation, vs.NextSeq, cmp.Or(vs.Resync, "none"))
	if vs.Resync != "" {
		return failure("after the failback the agent needs a resync (%s); the failback should have handed the volume back clean", vs.Resync)
	}
	c, err := nbd.Dial(ctx, d.nbdAddr, demoVolumeName)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Timeout = time.Minute
	rng := rand.New(rand.NewPCG(r.o.Seed, 0x4e))
	b := make([]byte, 4096)
	for range 64 {
		fillRandom(rng, b)
		if _, err := c.WriteAt(b, rng.Int64N(c.Size()/4096)*4096); err != nil {
			return fmt.Errorf("NBD write: %w", err)
		}
		fb.newWritten += int64(len(b))
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("NBD flush: %w", err)
	}
	flushed := time.Now()
	h, p, seen, err := d.settled(ctx)
	if err != nil {
		return err
	}
	st := d.ship.Status()
	fb.newShipped, fb.newPoint = st.BytesRaw, p.Seq
	fmt.Fprintf(w, "      64 writes (%s) through NBD, flush; point seq %d on the site %+.2fs after the flush\n",
		humanBytes(uint64(fb.newWritten)), p.Seq, seen.Sub(flushed).Seconds())
	fmt.Fprintf(w, "      shipped %s (%s on the wire) in %d segments: the new writes only, no initial replication\n",
		humanBytes(uint64(st.BytesRaw)), humanBytes(uint64(st.BytesWire)), st.SegmentsSent)
	if st.BytesRaw > fb.newWritten+1<<20 || st.Resync != nil {
		return failure("after the failback the agent shipped %d bytes (resync %+v) for %d bytes of new writes; this is a bug: please report it with the output above",
			st.BytesRaw, st.Resync, fb.newWritten)
	}
	r.hashes[p.Seq], r.labels[p.Seq] = h, "writes after the failback"
	seq, sum, _, err := r.pointSum(ctx, strconv.FormatUint(p.Seq, 10))
	if err != nil {
		return err
	}
	if err := checkPoint(w, seq, sum, r.hashes, r.labels); err != nil {
		return err
	}
	return c.Close()
}
