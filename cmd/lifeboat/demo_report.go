package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"lifeboat/pipeline"
)

// printPoints shows the site's points, marking those the demo waited for.
func (r *demoRun) printPoints(pts []pipeline.Point) {
	tw := tabwriter.NewWriter(r.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "      SEQ\tGEN\tKIND\tTIME\tNAME")
	for _, p := range pts {
		note := ""
		if l, ok := r.labels[p.Seq]; ok {
			note = "← after " + l
		}
		fmt.Fprintf(tw, "      %d\t%d\t%s\t%s\t%s\t%s\n", p.Seq, p.Generation, p.Kind, p.Time.Local().Format("15:04:05.000"), p.Name, note)
	}
	tw.Flush()
}

// verify reads the latest point and the first one back through the admin
// API and compares each with the source's hash at its seq.
func (r *demoRun) verify(ctx context.Context) error {
	seq, sum, n, err := r.pointSum(ctx, "latest")
	if err != nil {
		return err
	}
	fmt.Fprintf(r.w, "      GET /v1/volumes/%s/points/latest: point seq %d, %s\n", demoVolumeName, seq, humanBytes(uint64(n)))
	if err := checkPoint(r.w, seq, sum, r.hashes, r.labels); err != nil {
		return err
	}
	r.latest, r.latestHash = seq, sum
	if r.firstPoint != seq {
		_, sum, _, err := r.pointSum(ctx, strconv.FormatUint(r.firstPoint, 10))
		if err != nil {
			return err
		}
		fmt.Fprintf(r.w, "      and the first point, seq %d:\n", r.firstPoint)
		if err := checkPoint(r.w, r.firstPoint, sum, r.hashes, r.labels); err != nil {
			return err
		}
	}
	return nil
}

// pointSum streams a point's image from the admin API into sha256, as
// `lifeboat points export` does, and returns the point's seq, the hash and
// the image size.
func (r *demoRun) pointSum(ctx context.Context, point string) (uint64, string, int64, error) {
	d, err := pipeline.GetPoint(ctx, r.site.admin, r.site.url+"/v1/volumes/"+demoVolumeName, point)
	if err != nil {
		return 0, "", 0, err
	}
	defer d.Close()
	h := sha256.New()
	n, err := io.Copy(h, d)
	if err != nil {
		return 0, "", 0, fmt.Errorf("read point %d: %w", d.Seq, err)
	}
	return d.Seq, hex.EncodeToString(h.Sum(nil)), n, nil
}

// checkPoint prints the point's hash beside the source's at its seq and
// returns a failure unless they are equal.
func checkPoint(w io.Writer, seq uint64, got string, want, labels map[uint64]string) error {
	src, ok := want[seq]
	if !ok {
		fmt.Fprintf(w, "      MISMATCH: the demo recorded no source hash for point %d\n", seq)
		return failure("recovery point %d is not one the demo waited for; this is a bug: please report it with the output above", seq)
	}
	fmt.Fprintf(w, "        recovery point sha256 %s\n", got)
	fmt.Fprintf(w, "        source at the tag     %s (%s)\n", src, labels[seq])
	if got != src {
		fmt.Fprintf(w, "      MISMATCH: recovery point %d differs from the volume as it was when tagged\n", seq)
		return failure("recovery point %d does not hold the bytes of the volume at its tag; this is a bug: please report it with the output above", seq)
	}
	fmt.Fprintf(w, "      MATCH: recovery point %d holds exactly the bytes the volume held at its tag\n", seq)
	return nil
}

func (r *demoRun) summary(points int) {
	st, fb := r.fb.forward, r.fb // the shipper before the failback, and what the failback steps measured
	var written, zeroed int64
	writes := 0
	for _, rs := range r.rounds {
		written, zeroed, writes = written+rs.Written, zeroed+rs.Zeroed, writes+rs.Writes
	}
	lags := make([]string, len(r.lags))
	for i, l := range r.lags {
		lags[i] = fmt.Sprintf("%.2fs", l.Seconds())
	}
	row := func(k, format string, a ...any) { fmt.Fprintf(r.w, "      %-16s %s\n", k, fmt.Sprintf(format, a...)) }
	fmt.Fprintf(r.w, "\nSummary\n")
	row("volume", "%s: %s sparse, %s of data before protection", demoVolumeName, humanBytes(uint64(r.o.Size)), humanBytes(uint64(r.dataBytes)))
	row("initial copy", "%s to the first point, %s of segments shipped (holes skipped)",
		r.initialTime.Round(10*time.Millisecond), humanBytes(uint64(r.initialBytes)))
	row("workload", "%d rounds through NBD: %d writes, %s written, %s trimmed or zeroed",
		len(r.rounds), writes, humanBytes(uint64(written)), humanBytes(uint64(zeroed)))
	wire := "uncompressed"
	if st.BytesRaw > 0 {
		wire = fmt.Sprintf("%.0f%% of it", 100*float64(st.BytesWire)/float64(st.BytesRaw))
	}
	row("shipped", "%d segments, %s, %s on the wire (zstd: %s)", st.SegmentsSent, humanBytes(uint64(st.BytesRaw)),
		humanBytes(uint64(st.BytesWire)), wire)
	row("recovery points", "%d on the site", points)
	row("RPO", "flush → its point on the site: %s (a tag every %v); now %s", strings.Join(lags, ", "),
		r.site.ship.TagInterval, rpoString(st.RPOSeconds))
	row("verified", "latest point seq %d = source at its tag (sha256 %s…): MATCH", r.latest, r.latestHash[:16])
	for _, rec := range r.recovery {
		row(rec.kind, "point seq %d served in %s, first NBD read after %s, whole volume read in %s: MATCH", rec.point,
			rec.started.Round(time.Millisecond), rec.firstRead.Round(time.Millisecond), rec.readAll.Round(time.Millisecond))
	}
	row("site writes", "%s written on the failover volume; it then differed from the primary in %s",
		humanBytes(uint64(fb.siteWritten)), humanBytes(uint64(fb.differ)))
	row("reprotect", "%s sent (%s on the wire) for a %s volume (%.2f%%), %s of candidates, first sync in %s",
		humanBytes(uint64(fb.sentRaw)), humanBytes(uint64(fb.sentWire)), humanBytes(uint64(r.o.Size)),
		100*float64(fb.sentRaw)/float64(r.o.Size), humanBytes(uint64(fb.candidates)), fb.reprotect.Round(time.Millisecond))
	row("failback", "in %s; primary volume = failover volume: MATCH; the site's point seq %d", fb.failback.Round(time.Millisecond), fb.failbackSeq)
	row("forward again", "%s shipped for %s of new writes, no initial replication; point seq %d: MATCH",
		humanBytes(uint64(fb.newShipped)), humanBytes(uint64(fb.newWritten)), fb.newPoint)
	row("total", "%s", time.Since(r.start).Round(10*time.Millisecond))
}
