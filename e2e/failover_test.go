package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// restart starts the agent again with its flags and journal directory.
func (p *protected) restart() {
	p.t.Helper()
	p.a = startAgent(p.t, append(append([]string{}, p.args...), p.site.agentArgs()...)...)
	p.uri = p.a.uri["disk"]
}

// Unplanned failover to latest after kill -9 of the agent: the failover
// volume equals the latest point; change-point to an earlier point equals
// that point; once written, change-point needs --force; after commit it is
// refused. The restarted agent is told the volume is failed over, ships
// nothing, and says so.
func TestUnplannedFailoverAfterKill9(t *testing.T) {
	need(t, "qemu-io", "nbdcopy")
	s := newRecoverySite(t)
	p := protect(t, s, 64<<20, 8<<20)

	// Three rounds of writes, each replicated to a point equal to the
	// source at its tag.
	var seqs []uint64
	sums := map[uint64]string{}
	for i, w := range []string{"write -P 0x11 1M 2M", "write -P 0x22 20M 3M", "write -P 0x33 2M 1M"} {
		start := time.Now()
		run(t, "qemu-io", "-f", "raw", "-c", w, "-c", "flush", p.uri)
		seq, sum := p.checkLatest(start)
		t.Logf("round %d: point %d = %s", i+1, seq, sum[:16])
		seqs = append(seqs, seq)
		sums[seq] = sum
	}
	// More writes, then kill -9 at once: whatever the site has by then is
	// the latest point.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 40M 4M", "-c", "flush", p.uri)
	if err := p.a.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent survived SIGKILL?")
	}

	st := s.recovery("failover", "start", "disk", "--point", "latest")
	if st.Kind != "failover" || st.Committed || st.Planned || st.URL == "" || st.Written != 0 {
		t.Fatalf("failover start: %+v", st)
	}
	pts := s.points("disk")
	if latest := pts[len(pts)-1]; st.Point.Seq != latest.Seq {
		t.Fatalf("failed over to point %d; the latest point is %d", st.Point.Seq, latest.Seq)
	}
	vs, _ := s.volume("disk")
	if vs.AppliedSeq != vs.SpooledSeq {
		t.Fatalf("after failover to latest: applied seq %d, spooled %d: the spool was not applied first", vs.AppliedSeq, vs.SpooledSeq)
	}
	want := s.export("disk", fmt.Sprint(st.Point.Seq))
	if got := nbdSum(t, st.URL); got != want {
		t.Fatalf("failover volume has sha256 %s; point %d has %s", got, st.Point.Seq, want)
	}
	t.Logf("failed over to point %d (%s)", st.Point.Seq, st.URL)

	// Nothing written yet: no --force needed.
	earlier := seqs[0]
	st = s.recovery("failover", "change-point", "disk", "--point", fmt.Sprint(earlier))
	if st.Point.Seq != earlier || st.Committed {
		t.Fatalf("change-point to %d: %+v", earlier, st)
	}
	if got := nbdSum(t, st.URL); got != sums[earlier] {
		t.Fatalf("after change-point to %d the failover volume has sha256 %s; the point %s", earlier, got, sums[earlier])
	}

	// Written: change-point without --force is refused and changes nothing.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5e 8M 1M", "-c", "flush", st.URL)
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5e 8M 1M", st.URL)
	written := nbdSum(t, st.URL)
	_, list := s.recoveryList()
	if f := failoverOf(list, "disk"); f == nil || f.Written < 1<<20 {
		t.Fatalf("after writing 1 MiB to the failover volume: %+v", f)
	}
	r := s.cli("failover", "change-point", "disk", "--point", fmt.Sprint(seqs[1]))
	if r.code != 1 || !strings.Contains(r.out(), "--force") {
		t.Fatalf("change-point of a written failover volume without --force: want exit 1 naming --force\n%v", r)
	}
	_, list = s.recoveryList()
	if f := failoverOf(list, "disk"); f == nil || f.Point.Seq != earlier {
		t.Fatalf("a refused change-point moved the failover: %+v", f)
	}
	if got := nbdSum(t, st.URL); got != written {
		t.Fatal("a refused change-point changed the failover volume")
	}
	st = s.recovery("failover", "change-point", "disk", "--point", fmt.Sprint(seqs[1]), "--force")
	if st.Point.Seq != seqs[1] || st.Written != 0 {
		t.Fatalf("change-point --force to %d: %+v", seqs[1], st)
	}
	if got := nbdSum(t, st.URL); got != sums[seqs[1]] {
		t.Fatalf("after change-point --force to %d the failover volume has sha256 %s; the point %s", seqs[1], got, sums[seqs[1]])
	}

	st = s.recovery("failover", "commit", "disk")
	if !st.Committed || st.Point.Seq != seqs[1] {
		t.Fatalf("commit: %+v", st)
	}
	before, _ := s.recoveryList()
	r = s.cli("failover", "change-point", "disk", "--point", fmt.Sprint(seqs[2]), "--force")
	if r.code != 1 || !strings.Contains(r.out(), "committed") {
		t.Fatalf("change-point after commit: want exit 1 saying committed\n%v", r)
	}
	if after, _ := s.recoveryList(); after != before {
		t.Fatalf("a refused change-point changed the recovery state:\n%s\nwas\n%s", after, before)
	}
	if out := s.cli("volume", "list"); out.code != 0 || !strings.Contains(out.stdout, "FAILED OVER") {
		t.Fatalf("volume list does not show the failover:\n%v", out)
	}

	// The agent restarts (after its kill -9) and takes writes; the site
	// refuses its segments; it says why and ships nothing. (After a kill
	// -9 the agent needs a resync before its next tag, which it cannot do
	// while the site refuses it: so it journals its writes in segments and
	// keeps them, and takes no tag. TestRecoveryBadRequests watches a live
	// agent go on tagging after a failover.)
	site0, _ := s.volume("disk")
	p.restart()
	waitFor(t, 30*time.Second, "the restarted agent to say the volume is failed over", func() bool {
		return strings.Contains(shipperStatus(t, p.jroot, "disk").Stopped, "failed over at the site at")
	})
	for i := range 3 {
		sealed := shipperStatus(t, p.jroot, "disk").Tracker.Sealed
		run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %dM 1M", 0x60+i, 10+i), "-c", "flush", p.uri)
		waitFor(t, 30*time.Second, "the agent to seal a segment of its write", func() bool {
			st := shipperStatus(t, p.jroot, "disk")
			return st.Tracker.Sealed > sealed && st.Tracker.NextSeq > site0.SpooledSeq+1
		})
	}
	ag := shipperStatus(t, p.jroot, "disk")
	site1, _ := s.volume("disk")
	if site1.SpooledSeq != site0.SpooledSeq || site1.AppliedSeq != site0.AppliedSeq || site1.Points != site0.Points {
		t.Fatalf("the site took writes of a failed-over volume: spooled %d→%d, applied %d→%d, points %d→%d",
			site0.SpooledSeq, site1.SpooledSeq, site0.AppliedSeq, site1.AppliedSeq, site0.Points, site1.Points)
	}
	if ag.AckedSeq > site0.SpooledSeq || ag.Connected || ag.Tracker.Sealed < 3 {
		t.Fatalf("agent status after failover: acked seq %d (site has %d), connected %v, %d segments kept",
			ag.AckedSeq, site0.SpooledSeq, ag.Connected, ag.Tracker.Sealed)
	}
	t.Logf("agent journaled up to seq %d (%d segments kept); the site stays at %d", ag.Tracker.NextSeq-1, ag.Tracker.Sealed, site1.SpooledSeq)
	stat := run(t, binary, "status", "--journal-dir", p.jroot)
	if !strings.Contains(stat, "failed over at the site at") || !strings.Contains(stat, fmt.Sprintf("to recovery point %d", seqs[1])) {
		t.Fatalf("lifeboat status does not say the volume is failed over to point %d:\n%s", seqs[1], stat)
	}
	if !strings.Contains(p.a.Output(), "failed over at the site") {
		t.Fatalf("the agent did not log the failover:\n%s", p.a.Output())
	}
}

// fioVerifyJob is a fio job writing 4 KiB blocks at random with crc32c
// verify headers through uri (a fixed seed, so that a verify run replays
// the same blocks), its report as JSON in report.
func fioVerifyJob(uri, report string, extra ...string) []string {
	return append([]string{"--name=planned", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k",
		"--size=48m", "--iodepth=8", "--verify=crc32c", "--randrepeat=1", "--randseed=4242",
		"--output-format=json", "--output=" + report}, extra...)
}

// fioBytes returns the bytes fio's JSON report says its job completed in
// direction dir ("read", "write").
func fioBytes(t *testing.T, report, dir string) int64 {
	t.Helper()
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("fio report: %v", err)
	}
	// fio may print notes before the JSON.
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var r struct {
		Jobs []map[string]json.RawMessage `json:"jobs"`
	}
	if err := json.Unmarshal(b, &r); err != nil || len(r.Jobs) != 1 {
		t.Fatalf("fio report %s: %v\n%s", report, err, b)
	}
	var d struct {
		IOBytes int64 `json:"io_bytes"`
	}
	if err := json.Unmarshal(r.Jobs[0][dir], &d); err != nil {
		t.Fatalf("fio report %s, %s: %v", report, dir, err)
	}
	return d.IOBytes
}

var (
	fioRefused = regexp.MustCompile(`(?m)^fio: io_u error on file \S+: Operation not permitted: write offset=(\d+)`)
	fioBad     = regexp.MustCompile(`(?m)^.*verif.*\boffset[= ](\d+)`)
)

// offsets returns the offsets re's first group matches in out.
func offsets(re *regexp.Regexp, out string) map[string]bool {
	m := map[string]bool{}
	for _, s := range re.FindAllStringSubmatch(out, -1) {
		m[s[1]] = true
	}
	return m
}

// Planned failover while fio writes with --verify_state_save: a
// --verify_only run against the failover volume passes (every write fio
// saw completed is there); the source's export is read-only afterwards.
//
// fio's verify state counts every write it issued, also those the
// read-only source refused (EPERM): fio never saw them complete and they
// are in no volume, so the verify run may report exactly those blocks,
// and no other.
func TestPlannedFailoverKeepsEveryWrite(t *testing.T) {
	need(t, "fio", "qemu-io")
	s := newRecoverySite(t)
	p := protect(t, s, 64<<20, 8<<20)

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Rate-limited so that in its 90 s it never writes a block twice (48
	// MiB at 256 KiB/s takes 192 s): what a verify replays is exact.
	writeReport := filepath.Join(dir, "write.json")
	fio := exec.CommandContext(ctx, "fio", fioVerifyJob(p.uri, writeReport, "--do_verify=0", "--verify_state_save=1",
		"--time_based", "--runtime=90", "--rate=256k", "--aux-path="+dir)...)
	fio.Dir = dir
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan error, 1)
	go func() { fioDone <- fio.Wait() }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-fioDone:
		case <-time.After(10 * time.Second):
		}
	})
	// Fail over while fio's writes are being replicated.
	start := time.Now()
	waitFor(t, time.Minute, "fio's writes in the journal", func() bool {
		return shipperStatus(t, p.jroot, "disk").Tracker.NextSeq > 200
	})
	s.waitPoint("disk", start, time.Minute)
	st := s.recovery("failover", "start", "disk", "--planned", "--timeout", "30s")
	if !st.Planned || st.Kind != "failover" || st.URL == "" {
		t.Fatalf("planned failover: %+v", st)
	}
	if !strings.HasPrefix(st.Point.Name, "planned failover ") {
		t.Fatalf("planned failover to point %+v: want the agent's planned failover tag", st.Point)
	}
	t.Logf("planned failover to point %d (%s) after %v", st.Point.Seq, st.Point.Name, time.Since(start).Round(time.Millisecond))

	var fioErr error
	select {
	case fioErr = <-fioDone:
	case <-time.After(time.Minute):
		t.Fatalf("fio still runs a minute after the planned failover:\n%s", fioOut.String())
	}
	refused := offsets(fioRefused, fioOut.String())
	if fioErr == nil || len(refused) == 0 {
		t.Fatalf("fio after the planned failover: %v (want its writes refused with EPERM)\n%s", fioErr, fioOut.String())
	}
	if len(refused) > 8 {
		t.Fatalf("%d writes refused: more than fio's queue depth (8) were in flight?\n%s", len(refused), fioOut.String())
	}
	completed := fioBytes(t, writeReport, "write")
	if completed < 100*4096 {
		t.Fatalf("fio completed only %d bytes before the failover:\n%s", completed, fioOut.String())
	}
	states, _ := filepath.Glob(filepath.Join(dir, "*verify.state"))
	if len(states) == 0 {
		ls, _ := os.ReadDir(dir)
		t.Fatalf("fio left no verify state in %s (%v):\n%s", dir, ls, fioOut.String())
	}
	t.Logf("fio completed %d KiB; %d writes refused by the read-only source; verify state %s",
		completed>>10, len(refused), filepath.Base(states[0]))

	vctx, vcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer vcancel()
	verifyReport := filepath.Join(dir, "verify.json")
	verify := exec.CommandContext(vctx, "fio", fioVerifyJob(st.URL, verifyReport, "--verify_only", "--verify_state_load=1",
		"--verify_fatal=0", "--aux-path="+dir)...)
	verify.Dir = dir
	out, err := verify.CombinedOutput()
	bad := offsets(fioBad, string(out))
	for off := range bad {
		if !refused[off] {
			t.Fatalf("fio --verify_only: the block at %s is wrong on the failover volume, and the source had acknowledged it (%v)\n%s\nthe write run:\n%s",
				off, err, out, fioOut.String())
		}
	}
	if err != nil && len(bad) == 0 {
		t.Fatalf("fio --verify_only against the failover volume: %v\n%s", err, out)
	}
	if verified := fioBytes(t, verifyReport, "read"); verified < completed {
		t.Fatalf("fio --verify_only read %d bytes; the write run completed %d\n%s", verified, completed, out)
	}
	t.Logf("fio --verify_only passed on the failover volume (%d refused writes reported bad, as they must)", len(bad))

	// The source stays read-only: writes fail with a permission error,
	// reads work.
	w := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 4k", p.uri)
	if wout, err := w.CombinedOutput(); err == nil || !strings.Contains(string(wout), "not permitted") {
		t.Fatalf("write to the source after a planned failover: %v (want a permission error)\n%s", err, wout)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read 0 1M", p.uri)
	if _, list := s.recoveryList(); failoverOf(list, "disk") == nil || !failoverOf(list, "disk").Planned {
		t.Fatalf("test-failover list after a planned failover: %+v", list)
	}

	// And after a restart of the agent, from its first request on.
	p.a.stop(t, syscall.SIGTERM)
	p.a = startAgent(t, append(p.args, s.agentArgs()...)...)
	p.uri = p.a.uri["disk"]
	w = exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 4k", p.uri)
	if wout, err := w.CombinedOutput(); err == nil || !strings.Contains(string(wout), "not permitted") {
		t.Fatalf("write to the restarted source after a planned failover: %v (want a permission error)\n%s", err, wout)
	}
	if st := run(t, binary, "status", "--journal-dir", p.jroot); !strings.Contains(st, "READ-ONLY") {
		t.Fatalf("lifeboat status of the restarted source does not say it is read-only:\n%s", st)
	}
}

// A planned failover with the agent stopped times out: exit 1 saying the
// agent did not complete, nothing changed; the restarted agent replicates
// again.
func TestPlannedFailoverTimesOut(t *testing.T) {
	s := newRecoverySite(t)
	p := protect(t, s, 64<<20, 8<<20)
	p.a.stop(t, syscall.SIGTERM)
	before, _ := s.recoveryList()
	vs0, _ := s.volume("disk")

	r := s.cli("failover", "start", "disk", "--planned", "--timeout", "3s")
	if r.code != 1 || !strings.Contains(r.out(), "did not stop, flush and ship") || !strings.Contains(r.out(), "nothing changed") {
		t.Fatalf("planned failover with the agent stopped: want exit 1 saying the agent did not complete and nothing changed\n%v", r)
	}
	if after, list := s.recoveryList(); after != before || len(list) != 0 {
		t.Fatalf("a planned failover that timed out left recovery state:\n%s", after)
	}
	vl := s.cli("volume", "list")
	if vl.code != 0 || strings.Contains(vl.stdout, "FAILED OVER") || strings.Contains(vl.stdout, "planned failover") {
		t.Fatalf("volume list after a planned failover that timed out:\n%v", vl)
	}
	if vs, _ := s.volume("disk"); vs.PlannedFailover != "" || len(vs.Recovery) != 0 {
		t.Fatalf("volume status after the timeout: planned %q, recovery %+v", vs.PlannedFailover, vs.Recovery)
	}

	p.restart()
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 4M 1M", "-c", "flush", p.uri)
	seq, _ := p.checkLatest(start)
	if seq <= vs0.LatestPoint.Seq {
		t.Fatalf("after the restart the latest point is %d; it was %d", seq, vs0.LatestPoint.Seq)
	}
	if st := shipperStatus(t, p.jroot, "disk"); st.Stopped != "" {
		t.Fatalf("agent status after the timed-out planned failover: stopped %q", st.Stopped)
	}
}
