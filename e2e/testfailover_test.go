package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"lifeboat/internal/testenv"
	"lifeboat/pipeline"
)

// Acceptance of test failover (issue 12): ext4 on a loop device over the
// agent's FUSE file, files written (a sha256 list), a tag with writes
// paused (fsfreeze). Test failover of that point: a loop device over the
// server's FUSE exposure of the test volume mounts, e2fsck -fn is clean,
// every file's sha256 matches; files are written in the test volume while
// the source goes on (new files, new points). Afterwards the replica
// equals the source, every point up to the tested one has the sha256 it had
// before, newer points arrived during the test, and cleanup leaves no
// export, file, overlay, loop device or mount.
func TestTestFailoverExt4(t *testing.T) {
	need(t, "losetup", "mkfs.ext4", "e2fsck", "fsfreeze", "mount", "umount", "nbdinfo", "nbdcopy", "qemu-io")
	testenv.FUSE(t)
	dir := t.TempDir()
	agentMnt, siteMnt := filepath.Join(dir, "agent-fuse"), filepath.Join(dir, "site-fuse")
	srcFS, testFS := filepath.Join(dir, "src"), filepath.Join(dir, "test")
	// Cleanups run last in, first out: the FUSE mounts go after the
	// processes serving them are stopped, the loop devices and ext4
	// mounts over them before.
	tfUnmountAtEnd(t, agentMnt)
	tfUnmountAtEnd(t, siteMnt)
	s := newSiteWith(t, nil, []string{"--recovery-nbd", "127.0.0.1:0", "--fuse-mount", siteMnt})
	nbdAddr := s.tfRecoveryNBD()
	p := protect(t, s, 128<<20, 0, "--nbd", "", "--fuse-mount", agentMnt)
	if p.uri != filepath.Join(agentMnt, "disk") {
		t.Fatalf("the agent serves disk as %q, want its FUSE file", p.uri)
	}

	// The source: ext4 over a loop device over the agent's FUSE file. No
	// lazy init, so that an idle mount writes nothing behind our back.
	srcDev := tfLoopDevice(t, p.uri)
	run(t, "mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", srcDev)
	tfMountAt(t, srcDev, srcFS)
	t.Cleanup(func() { exec.Command("fsfreeze", "-u", srcFS).Run() }) // before its umount
	files := tfWriteRandomFiles(t, srcFS, "before", 20)

	// Writes paused: the tag after the freeze's own writes is a consistent
	// file system. since is taken before the freeze, so that the tag
	// following its last write is newer whatever the tag ticks do.
	since := time.Now()
	run(t, "fsfreeze", "-f", srcFS)
	seq, srcSum := p.settle(since)
	replica := s.tfReplicaImage("disk")
	if got := sha256File(t, replica); got != srcSum {
		t.Fatalf("with writes paused, the replica has sha256 %s, the source %s", got, srcSum)
	}
	before := map[uint64]string{}
	for _, pt := range s.points("disk") {
		if pt.Seq <= seq {
			before[pt.Seq] = s.tfPointSum("disk", pt.Seq)
		}
	}
	if before[seq] != srcSum {
		t.Fatalf("point %d has sha256 %s, the source when it was tagged %s", seq, before[seq], srcSum)
	}
	t.Logf("point %d = source %s; %d points up to it", seq, srcSum[:16], len(before))

	// The test failover of that point.
	st := s.tfStartTest("disk", fmt.Sprint(seq))
	export := "web01.disk.test"
	if st.Kind != pipeline.RecoveryTest || st.Point.Seq != seq || st.Export != export ||
		st.File != filepath.Join(siteMnt, export) || st.URL != nbdAddr+"/"+export || st.Volume.Name != "disk" {
		t.Fatalf("test-failover start answered %+v; want kind %s, point %d, export %s, file in %s, URL at %s",
			st, pipeline.RecoveryTest, seq, export, siteMnt, nbdAddr)
	}
	if list := s.tfRecoveryList(); len(list) != 1 || list[0].Export != export {
		t.Fatalf("test-failover list: %+v", list)
	}
	// Before any write, the test volume is the point, over NBD and as the
	// FUSE file.
	if out := run(t, "nbdinfo", "--size", st.URL); strings.TrimSpace(out) != fmt.Sprint(128<<20) {
		t.Fatalf("nbdinfo --size %s: %s", st.URL, out)
	}
	if got := tfNBDSum(t, st.URL); got != srcSum {
		t.Fatalf("test volume over NBD: sha256 %s, point %d %s", got, seq, srcSum)
	}
	if got := sha256File(t, st.File); got != srcSum {
		t.Fatalf("test volume's FUSE file: sha256 %s, point %d %s", got, seq, srcSum)
	}

	// Replication goes on during the test: the source thaws and writes
	// more, and newer points arrive.
	thawed := time.Now()
	run(t, "fsfreeze", "-u", srcFS)
	more := tfWriteRandomFiles(t, srcFS, "during", 5)
	if pt := s.waitPoint("disk", thawed, 30*time.Second); pt.Seq <= seq {
		t.Fatalf("point %d tagged after the thaw is not newer than the tested point %d", pt.Seq, seq)
	}

	// The test volume: a loop device over the site's FUSE file.
	testDev := tfLoopDevice(t, st.File)
	if out, err := exec.Command("e2fsck", "-fn", testDev).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn of the test volume of point %d: %v\n%s", seq, err, out)
	}
	tfMountAt(t, testDev, testFS)
	tfCheckFiles(t, testFS, files)
	for name := range more {
		if _, err := os.Stat(filepath.Join(testFS, name)); err == nil {
			t.Fatalf("%s, written to the source after point %d, shows in its test volume", name, seq)
		}
	}
	written := tfWriteRandomFiles(t, testFS, "test", 8)
	run(t, "sync", "-f", testFS)

	// Cleanup is refused while the test volume is in use, and changes
	// nothing then.
	out, err := exec.Command(binary, "test-failover", "cleanup", "disk", "--server", s.url(), "--data-dir", s.dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Fatalf("test-failover cleanup while a loop device holds the file: %v\n%s", err, out)
	}
	if got := tfNBDExports(t, nbdAddr); !slices.Equal(got, []string{export}) {
		t.Fatalf("after the refused cleanup the site serves %q, want %q", got, export)
	}

	run(t, "umount", testFS)
	tfDetach(t, testDev, st.File)
	// The test writes are in the test volume, again as a file system.
	testDev = tfLoopDevice(t, st.File)
	if out, err := exec.Command("e2fsck", "-fn", testDev).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn of the test volume after its writes: %v\n%s", err, out)
	}
	tfMountAt(t, testDev, testFS)
	tfCheckFiles(t, testFS, files)
	tfCheckFiles(t, testFS, written)
	run(t, "umount", testFS)
	tfDetach(t, testDev, st.File)
	if l := tfLoopsOver(t, st.File); len(l) != 0 {
		t.Fatalf("loop devices left over %s: %s", st.File, l)
	}

	// The source goes on; its last point equals it. The test writes reached
	// neither the replica nor any point.
	since = time.Now()
	run(t, "umount", srcFS)
	last, srcSum2 := p.settle(since)
	if got := sha256File(t, replica); got != srcSum2 {
		t.Fatalf("after the test, the replica has sha256 %s, the source %s", got, srcSum2)
	}
	if got := s.tfPointSum("disk", last); got != srcSum2 {
		t.Fatalf("after the test, point %d has sha256 %s, the source %s", last, got, srcSum2)
	}
	newer := 0
	for _, pt := range s.points("disk") {
		if pt.Seq > seq && pt.Time.Before(since) {
			newer++
		}
	}
	if newer == 0 {
		t.Fatalf("no point newer than %d arrived during the test", seq)
	}
	for pseq, sum := range before {
		if got := s.tfPointSum("disk", pseq); got != sum {
			t.Fatalf("point %d has sha256 %s after the test failover, %s before", pseq, got, sum)
		}
	}
	mountRO := filepath.Join(dir, "src-again")
	tfMountAt(t, srcDev, mountRO) // the source's loop device is still attached
	tfCheckFiles(t, mountRO, files)
	tfCheckFiles(t, mountRO, more)
	for name := range written {
		if _, err := os.Stat(filepath.Join(mountRO, name)); err == nil {
			t.Fatalf("%s, written in the test volume, shows in the source", name)
		}
	}
	run(t, "umount", mountRO)
	t.Logf("%d points newer than %d arrived during the test; replica = source = point %d", newer, seq, last)

	// Cleanup leaves nothing.
	gone := s.tfCleanupTest("disk")
	if gone.Point.Seq != seq || gone.Written == 0 {
		t.Fatalf("test-failover cleanup answered %+v: want point %d and the bytes written", gone, seq)
	}
	if list := s.tfRecoveryList(); len(list) != 0 {
		t.Fatalf("after cleanup, test-failover list: %+v", list)
	}
	if ents, err := os.ReadDir(siteMnt); err != nil || len(ents) != 0 {
		t.Fatalf("after cleanup, the site's FUSE dir holds %v (%v)", ents, err)
	}
	if got := tfNBDExports(t, nbdAddr); len(got) != 0 {
		t.Fatalf("after cleanup, the site serves over NBD: %q", got)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4k", st.URL).CombinedOutput(); err == nil {
		t.Fatalf("after cleanup, %s still reads:\n%s", st.URL, out)
	}
	tfOnlyStateJSON(t, s)
	if l := tfLoopsOver(t, st.File); len(l) != 0 {
		t.Fatalf("loop devices left over %s: %s", st.File, l)
	}
	for _, m := range []string{testFS, mountRO} {
		if tfMounted(t, m) {
			t.Fatalf("%s still mounted", m)
		}
	}
}

// tfOnlyStateJSON checks that the site's recovery directory holds only
// state.json: no test failover's overlay is left.
func tfOnlyStateJSON(t *testing.T, s *site) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.dir, "recovery"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"state.json"}) {
		t.Fatalf("DATA-DIR/recovery holds %q, want only state.json", names)
	}
}

// Two volumes test-failed-over at once: each test volume equals its own
// point, writes to one do not show in the other, and cleaning up one
// leaves the other served.
func TestTestFailoverTwoVolumesAtOnce(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy", "qemu-io")
	s := newSiteWith(t, nil, []string{"--recovery-nbd", "127.0.0.1:0"})
	nbdAddr := s.tfRecoveryNBD()
	dir := t.TempDir()
	jroot := filepath.Join(dir, "journal")
	names := []string{"disk", "disk2"}
	imgs := map[string]string{}
	args := []string{"--journal-dir", jroot, "--segment-age", "200ms", "--tag-interval", "1s", "--max-backoff", "2s"}
	for _, n := range names {
		imgs[n] = filepath.Join(dir, n+".img")
		makeImage(t, imgs[n], 64<<20, 4<<20)
		args = append(args, "--volume", n+"="+imgs[n])
	}
	a := startAgent(t, append(args, s.agentArgs()...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", a.Output())
		}
	})
	// A different pattern at the same place of each, then a point of each
	// equal to its source.
	since := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 1M", "-c", "flush", a.uri["disk"])
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x22 1M 1M", "-c", "flush", a.uri["disk2"])
	seqs, sums := map[string]uint64{}, map[string]string{}
	for _, n := range names {
		seqs[n], sums[n] = s.settle(n, jroot, imgs[n], since)
		if got := s.tfPointSum(n, seqs[n]); got != sums[n] {
			t.Fatalf("point %d of %s has sha256 %s, its source %s", seqs[n], n, got, sums[n])
		}
	}

	// Both at once (started one after the other: concurrent starts are
	// TestTestFailoverConcurrentRequests).
	states := map[string]pipeline.RecoveryState{}
	for _, n := range names {
		states[n] = s.tfStartTest(n, fmt.Sprint(seqs[n]))
	}
	for _, n := range names {
		st := states[n]
		if st.Point.Seq != seqs[n] || st.Export != "web01."+n+".test" || st.URL != nbdAddr+"/web01."+n+".test" {
			t.Fatalf("test failover of %s: %+v (want point %d at %s)", n, st, seqs[n], nbdAddr)
		}
		if got := tfNBDSum(t, st.URL); got != sums[n] {
			t.Fatalf("test volume of %s: sha256 %s, its point %d %s", n, got, seqs[n], sums[n])
		}
	}
	if got := tfNBDExports(t, nbdAddr); !slices.Equal(got, []string{"web01.disk.test", "web01.disk2.test"}) {
		t.Fatalf("the site serves %q, want both test volumes", got)
	}

	// Writes to one do not show in the other, nor in the sources.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xa1 1M 512k", "-c", "write -P 0xa2 8M 1M", "-c", "flush", states["disk"].URL)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xb1 1536k 512k", "-c", "flush", states["disk2"].URL)
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0xa1 1M 512k", "-c", "read -P 0x11 1536k 512k",
		"-c", "read -P 0xa2 8M 1M", states["disk"].URL)
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x22 1M 512k", "-c", "read -P 0xb1 1536k 512k",
		"-c", "read -P 0 8M 1M", states["disk2"].URL)
	for _, n := range names {
		if got := sha256File(t, imgs[n]); got != sums[n] {
			t.Fatalf("source %s changed during the test failovers: sha256 %s, was %s", n, got, sums[n])
		}
		if got := s.tfPointSum(n, seqs[n]); got != sums[n] {
			t.Fatalf("point %d of %s: sha256 %s after the test writes, %s before", seqs[n], n, got, sums[n])
		}
	}

	// Cleanup of one leaves the other served.
	s.tfCleanupTest("disk")
	if list := s.tfRecoveryList(); len(list) != 1 || list[0].Export != "web01.disk2.test" {
		t.Fatalf("after cleanup of disk, test-failover list: %+v", list)
	}
	if got := tfNBDExports(t, nbdAddr); !slices.Equal(got, []string{"web01.disk2.test"}) {
		t.Fatalf("after cleanup of disk, the site serves %q", got)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4k", states["disk"].URL).CombinedOutput(); err == nil {
		t.Fatalf("after cleanup, %s still reads:\n%s", states["disk"].URL, out)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x22 1M 512k", "-c", "read -P 0xb1 1536k 512k", states["disk2"].URL)
	s.tfCleanupTest("disk2")
	if list := s.tfRecoveryList(); len(list) != 0 {
		t.Fatalf("after cleanup of both: %+v", list)
	}
	tfOnlyStateJSON(t, s)
}

// A test failover survives a restart of the server: 1 MiB written over
// NBD, SIGTERM, start again; the same export is served again with the
// write in it, and cleanup then removes it.
func TestTestFailoverSurvivesServerRestart(t *testing.T) {
	need(t, "nbdinfo", "qemu-io")
	// A fixed recovery NBD address, so that the restarted server serves
	// the test volume at the URL its start answered.
	s := newSiteWith(t, nil, []string{"--recovery-nbd", tfFreeAddr(t)})
	nbdAddr := s.tfRecoveryNBD()
	p := protect(t, s, 64<<20, 4<<20)
	since := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 2M", "-c", "flush", p.uri)
	seq, srcSum := p.settle(since)

	st := s.tfStartTest("disk", "latest")
	if st.Point.Seq != seq || st.URL != nbdAddr+"/web01.disk.test" {
		t.Fatalf("test-failover start --point latest: %+v (want point %d at %s)", st, seq, nbdAddr)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xe7 1M 1M", "-c", "flush", st.URL)

	s.stop(syscall.SIGTERM)
	s.start()
	if got := s.tfRecoveryNBD(); got != nbdAddr {
		t.Fatalf("the restarted server serves recovery volumes at %s, before at %s", got, nbdAddr)
	}
	// Logged (stderr) before the ready line (stdout); the two pipes are
	// read apart, so wait for it.
	waitFor(t, 10*time.Second, "the restarted server to log that it serves the test volume again", func() bool {
		return strings.Contains(s.srv.Output(), "recovery volume served again")
	})
	if got := tfNBDExports(t, nbdAddr); !slices.Equal(got, []string{"web01.disk.test"}) {
		t.Fatalf("after the restart the site serves %q", got)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 1M", "-c", "read -P 0xe7 1M 1M", st.URL)
	list := s.tfRecoveryList()
	if len(list) != 1 || list[0].Point.Seq != seq || list[0].URL != st.URL || list[0].Error != "" || list[0].Written < 1<<20 {
		t.Fatalf("after the restart, test-failover list: %+v", list)
	}
	if got := s.tfPointSum("disk", seq); got != srcSum {
		t.Fatalf("point %d: sha256 %s after the test writes and the restart, %s before", seq, got, srcSum)
	}
	s.tfCleanupTest("disk")
	if list := s.tfRecoveryList(); len(list) != 0 {
		t.Fatalf("after cleanup: %+v", list)
	}
	if got := tfNBDExports(t, nbdAddr); len(got) != 0 {
		t.Fatalf("after cleanup the site serves %q", got)
	}
	tfOnlyStateJSON(t, s)
}
