package e2e

import (
	"cmp"
	encbin "encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/pipeline"
)

// The agent killed (-9) in the middle of the initial replication to the
// file target: restarted, it goes on from what the site acknowledged
// instead of copying the volume again, and the first point equals the
// source.
func TestInitialReplicationResumesAfterAgentKill(t *testing.T) {
	initialReplicationResumesAfterAgentKill(t, newSite(t), 256<<20, 128<<20, 16<<20)
}

// The process server killed (-9) in the middle of the initial replication
// and restarted on the same data directory and address: the agent, never
// restarted, goes on with the same copy (no second resync, no new
// generation), resending at most what it had not had acknowledged, and
// the first point equals the source.
func TestInitialReplicationResumesAfterServerKill(t *testing.T) {
	s := newSite(t)
	c := startInitialCopy(t, s, 256<<20, 128<<20, 16<<20)
	gen := 0
	c.killMidCopy(nil, func() {
		gen = c.copyGeneration()
		s.stop(syscall.SIGKILL)
	})
	// The killed server's log is final. A "segment applied" line follows
	// the replica's commit, so the data it counts is on the replica; a
	// segment committed in the instant before the kill and not yet logged
	// is not counted by either server (the restarted one skips what the
	// replica has), so the sums below may fall short of the data by it.
	before := sumApplied(s.log())
	// Down until the agent has noticed, so that it resumes against a
	// restarted server rather than never seeing the failure.
	waitFor(t, 15*time.Second, "the agent to notice the server is gone", func() bool { return !c.status().Connected })
	s.start()
	first, seq := c.checkFirstPoint()
	total, after := sumApplied(s.log()), sumApplied(s.srv.Output())
	out := c.a.Output()
	t.Logf("initial replication of %d MiB of data: %d MiB applied before the server's kill, %d MiB by the restarted server, "+
		"%d MiB in all (starting over would be at least %d MiB); the agent paused shipping %d times; "+
		"the first point %d (%s) and the latest %d equal the source",
		c.data>>20, before>>20, after>>20, total>>20, (before+c.data)>>20, strings.Count(out, "shipping paused"), first.Seq, first.Name, seq)
	if after == 0 {
		t.Fatal("the restarted server applied no data: the kill did not happen in the middle of the copy")
	}
	// The agent never restarted, so the copy is the one resync it
	// started with every region dirty, in one generation.
	if n := strings.Count(out, "resync started"); n != 1 || strings.Contains(out, "full resync") {
		t.Fatalf("the agent started %d resyncs (full resync logged: %v): the server's crash made it copy again",
			n, strings.Contains(out, "full resync"))
	}
	if g := c.copyGeneration(); g != gen {
		t.Fatalf("the copy was in generation %d before the kill, %d after: the agent started a new one", gen, g)
	}
	for k, n := range appliedSegments(s.log()) {
		if n != 1 {
			t.Fatalf("segment %s applied %d times across the kill", k, n)
		}
	}
	// What the killed server had received but not spooled was never
	// acknowledged, so the agent still has it in its journal and sends it
	// again; a spooled segment is applied by the restarted server from its
	// spool, and an applied one is not applied again. What can be sent
	// again is therefore at most the segments in flight, the agent's
	// unacknowledged journal, which its --journal-quota bounds: the data is
	// applied once, plus at most that. A copy started over would apply what
	// the site had at the kill (applied or spooled, at least data/3 >
	// quota) and then all the data again: more than this bound.
	if total > c.data+c.quota {
		t.Fatalf("%d MiB applied in all for %d MiB of data: more than the %d MiB journal quota sent again",
			total>>20, c.data>>20, c.quota>>20)
	}
}

// initialReplicationResumesAfterAgentKill is the agent-kill test on site
// s (any target) with a volume of size bytes holding data random bytes,
// and the agent's journal quota.
func initialReplicationResumesAfterAgentKill(t *testing.T, s *site, size, data, quota int64) {
	t.Helper()
	c := startInitialCopy(t, s, size, data, quota)
	// Killed once the persisted bitmap has more than the quota of the data
	// cleared as acknowledged, so that a resumed copy sends less than the
	// data again, and one started over, all of it.
	c.killMidCopy(func() bool { return c.dirtyData() <= data-quota }, func() { c.a.stop(t, syscall.SIGKILL) })
	left := c.dirtyData()
	// What the server received before the kill is applied after it:
	// count it all as before the restart.
	before := settledApplied(t, s, "disk")
	c.restart()
	first, seq := c.checkFirstPoint()
	total := sumApplied(s.log())
	after := total - before
	t.Logf("initial replication of %d MiB of data: %d MiB applied before the kill, %d MiB of the data still dirty in the killed agent's bitmap; "+
		"the restart's resync started with %d MiB dirty (holes included) and %d MiB were applied after it; %d MiB in all "+
		"(starting over would be %d MiB); the first point %d (%s) and the latest %d equal the source",
		data>>20, before>>20, left>>20, resyncDirtyBytes(t, c.a.Output())>>20, after>>20, total>>20, (before+data)>>20, first.Seq, first.Name, seq)
	// After the restart the server gets the journal segments it had not
	// received (records of less than the quota: the agent journals no
	// further ahead of the acknowledgements) and the restarted agent's
	// resync of what its bitmap has dirty, at most what the killed agent
	// left there (no writes since, so no bit is set again): at most left
	// data. Both are random data, applied byte for byte.
	if after > left+quota {
		t.Fatalf("the restart applied %d MiB: more than the %d MiB of data the killed agent's bitmap had dirty plus the %d MiB journal quota",
			after>>20, left>>20, quota>>20)
	}
	// Implied by the bound (the unshipped records take less than the quota)
	// while left ≤ data-quota; said plainly.
	if total >= before+data {
		t.Fatalf("%d MiB applied in all, %d MiB before the kill: the restarted agent started over", total>>20, before>>20)
	}
}

// initialCopy is an agent replicating a new volume ("disk") to a site: a
// sparse image of size bytes with data random bytes at imageDataAt
// (makeImage), so its initial replication copies the data and skips the
// holes.
type initialCopy struct {
	*protected
	data int64
	// quota is the agent's --journal-quota: it bounds how far the copy
	// runs ahead of what the site has acknowledged, so what a crash on
	// either side can make it send again.
	quota  int64
	killed []string // output of the agents killed
}

// startInitialCopy starts the agent of an initialCopy. The checkpoint
// interval is short: it is how long an acknowledged region stays dirty in
// the persisted bitmap, so what a restarted agent copies again.
func startInitialCopy(t *testing.T, s *site, size, data, quota int64) *initialCopy {
	t.Helper()
	dir := t.TempDir()
	c := &initialCopy{protected: &protected{img: filepath.Join(dir, "disk.img"), jroot: filepath.Join(dir, "journal"), site: s, t: t},
		data: data, quota: quota}
	makeImage(t, c.img, size, data)
	c.args = []string{"--volume", "disk=" + c.img, "--journal-dir", c.jroot, "--segment-age", "200ms",
		"--tag-interval", "1s", "--max-backoff", "2s", "--journal-quota", fmt.Sprint(quota), "--checkpoint-interval", "250ms"}
	c.a = startAgent(t, slices.Concat(c.args, s.agentArgs())...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, out := range c.killed {
				t.Logf("output of the killed agent:\n%s", out)
			}
			t.Logf("agent output:\n%s", c.a.Output())
		}
	})
	return c
}

// killMidCopy calls kill once the site has received a third of the data
// and also (if not nil) holds, and fails the test if the agent had read
// the whole volume for the copy by then (it logs "resync complete" before
// it takes the tag that becomes the first point). The agent reads ahead of
// what the site has received by at most the journal quota, so a third of
// the data leaves the copy unfinished while the quota is well under two
// thirds, however far the site's apply lags behind what it receives. And a
// third of the data is more than the quota: a copy that started over
// would send more again than a resumed one may.
func (c *initialCopy) killMidCopy(also func() bool, kill func()) {
	c.t.Helper()
	waitFor(c.t, time.Minute, "a third of the volume's data received", func() bool {
		return c.received() >= c.data/3 && (also == nil || also())
	})
	kill()
	if strings.Contains(c.a.Output(), "resync complete") {
		c.t.Fatal("the agent had read the whole volume for the copy before the kill; the test needs a slower copy or more data")
	}
}

// received is about what the site has of the volume: the data its log
// says it applied and the segments in its spool, waiting to be applied.
func (c *initialCopy) received() int64 {
	applied := sumApplied(c.site.log())
	vs, _ := c.site.volume("disk")
	return applied + vs.SpoolBytes
}

// restart starts the agent again after it was killed, with the same flags.
func (c *initialCopy) restart() {
	c.t.Helper()
	c.killed = append(c.killed, c.a.Output())
	c.a = startAgent(c.t, slices.Concat(c.args, c.site.agentArgs())...)
	c.uri = c.a.uri["disk"]
}

// checkFirstPoint waits for the point that ends the initial replication
// ("resync complete") and checks that the volume's first point and its
// latest, once settled, equal the source. The first is not always that
// one: the shipper's tag loop may take a crash-consistent tag beside the
// resync's own, just before or after it. No tag can come before the copy
// ends (the tracker refuses it), and nothing is written meanwhile, so
// every point must equal the source.
func (c *initialCopy) checkFirstPoint() (first pipeline.Point, latest uint64) {
	c.t.Helper()
	c.site.waitPoint("disk", time.Time{}, 2*time.Minute)
	var pts []pipeline.Point
	waitFor(c.t, 30*time.Second, "the point that ends the initial replication", func() bool {
		pts = c.site.points("disk")
		return slices.ContainsFunc(pts, func(p pipeline.Point) bool { return strings.HasPrefix(p.Name, "resync complete") })
	})
	first = slices.MinFunc(pts, func(a, b pipeline.Point) int { return cmp.Compare(a.Seq, b.Seq) })
	latest, want := c.checkLatest(time.Time{})
	if first.Seq != latest {
		if got := c.site.export("disk", fmt.Sprint(first.Seq)); got != want {
			c.t.Fatalf("first recovery point %+v has sha256 %s, the source %s", first, got, want)
		}
	}
	return first, latest
}

// copyGeneration is the generation of the segments the site applied last.
func (c *initialCopy) copyGeneration() int {
	c.t.Helper()
	m := appliedGeneration.FindAllStringSubmatch(c.site.log(), -1)
	if m == nil {
		c.t.Fatal("the server applied no segment")
	}
	g, _ := strconv.Atoi(m[len(m)-1][1])
	return g
}

// dirtyData is the data of the volume (at imageDataAt) that the agent's
// persisted bitmap has dirty: what a restarted agent copies again. It
// reads the file as tracker/bitmap.go lays it out (a 4096-byte header
// with the region size at byte 16, then one bit a region in little-endian
// 64-bit words), as a crash leaves it.
func (c *initialCopy) dirtyData() int64 {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.jroot, "disk", "dirty.bitmap"))
	if err != nil || len(b) < 4096 || string(b[:8]) != "LBDIRTY1" {
		c.t.Fatalf("read the dirty bitmap: %v (%d bytes)", err, len(b))
	}
	rs := int64(encbin.LittleEndian.Uint64(b[16:]))
	var n int64
	for r := imageDataAt / rs; r < (imageDataAt+c.data+rs-1)/rs; r++ {
		if w := 4096 + r/64*8; encbin.LittleEndian.Uint64(b[w:])&(1<<(r%64)) != 0 {
			n += rs
		}
	}
	return n
}

var appliedGeneration = regexp.MustCompile(`segment applied volume=\S+ generation=(\d+)`)

var appliedBytes = regexp.MustCompile(`segment applied volume=\S+ generation=\d+ first_seq=\d+ last_seq=\d+ bytes=(\d+)`)

// sumApplied is the segment bytes a server log says were applied.
func sumApplied(log string) int64 {
	var n int64
	for _, m := range appliedBytes.FindAllStringSubmatch(log, -1) {
		b, _ := strconv.ParseInt(m[1], 10, 64)
		n += b
	}
	return n
}

// settledApplied waits until the server has applied every segment it
// received of volume and returns the bytes its log says it applied.
func settledApplied(t *testing.T, s *site, volume string) int64 {
	t.Helper()
	last := int64(-1)
	waitFor(t, time.Minute, "the server to apply what it received", func() bool {
		v, ok := s.volume(volume)
		n := sumApplied(s.log())
		done := ok && v.AppliedSeq == v.SpooledSeq && n == last
		last = n
		return done
	})
	return last
}

var resyncStarted = regexp.MustCompile(`resync started volume=\S+ .*dirty_regions=(\d+) region_size=(\d+)`)

// resyncDirtyBytes is the size of the dirty regions the first resync in
// an agent's log started with.
func resyncDirtyBytes(t *testing.T, log string) int64 {
	t.Helper()
	m := resyncStarted.FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no resync in the agent's log:\n%s", log)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	r, _ := strconv.ParseInt(m[2], 10, 64)
	return n * r
}
