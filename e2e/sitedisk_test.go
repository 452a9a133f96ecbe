package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// smallDisk mounts a fresh ext4 file system of size bytes (a loop device
// over an image file, no reserved blocks) and returns its mount point. It
// is unmounted, and the loop device detached, when the test ends, after
// the processes the test started later are gone.
func smallDisk(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("LIFEBOAT_REQUIRE_INTEGRATION") == "1" {
			t.Fatal("mounting a small file system needs root (LIFEBOAT_REQUIRE_INTEGRATION=1)")
		}
		t.Skip("mounting a small file system needs root")
	}
	need(t, "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "disk.ext4"), filepath.Join(dir, "mnt")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	run(t, "mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", img)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-o", "loop", img, mnt) // the loop device is detached at umount
	t.Cleanup(func() {
		var out []byte
		for range 50 { // a process killed a moment ago may still hold a file
			if out, err = exec.Command("umount", mnt).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("umount %s: %v\n%s", mnt, err, out)
	})
	return mnt
}

// ballast fills the file system of dir with files until about keep bytes
// (within a few blocks) are free, and returns a function that removes
// them.
func ballast(t *testing.T, dir string, keep int64) (remove func()) {
	t.Helper()
	var paths []string
	remove = func() {
		for _, p := range paths {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; ; i++ {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		free := int64(st.Bavail) * st.Frsize
		if free-keep < 64<<10 || i == 8 { // the file system's metadata takes a little besides
			t.Logf("ballast: %d KiB free (wanted %d KiB)", free>>10, keep>>10)
			return remove
		}
		path := filepath.Join(dir, fmt.Sprintf("ballast-%d-%d", time.Now().UnixNano(), i))
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
		err = unix.Fallocate(int(f.Fd()), 0, 0, free-keep)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
		if err != nil {
			t.Fatalf("ballast of %d KiB: %v", (free-keep)>>10, err)
		}
	}
}

// The site's data directory on a small file system that replication
// fills. First, more data than fits is written: the agent's writes go on
// (its journal grows), the server throttles before the disk is full and
// says so (log, volume status, 503 "site disk full", `lifeboat status` on
// the agent); the ballast is deleted and replication catches up with no
// restart, the latest point equal to the source. Then a write-zeroes, a
// ZERO record of a few bytes in the journal for which the replica must
// nevertheless keep before-images (for the last point), fills the disk
// during the apply (ENOSPC): the applier waits, and once the ballast is
// gone reopens its replica and catches up, again with no restart.
func TestSiteDiskFullHealsWithoutRestart(t *testing.T) {
	need(t, "nbdcopy", "qemu-io")
	mnt := smallDisk(t, 512<<20)
	// No reserve, so that phase 2 can fill the disk to the last block; the
	// throttle still refuses a segment that would not fit.
	s := newSiteAt(t, filepath.Join(mnt, "server"), nil, []string{"--min-free", "0"})
	p := protect(t, s, 1<<30, 8<<20)
	agentPid, serverPid := p.a.cmd.Process.Pid, s.srv.cmd.Process.Pid

	// Phase 1: the throttle.
	unballast := ballast(t, mnt, 64<<20)
	src := filepath.Join(t.TempDir(), "src.bin")
	buf := make([]byte, 160<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	run(t, "nbdcopy", "--flush", src, p.uri) // the agent's writes are not held up
	waitFor(t, 2*time.Minute, "the site to throttle on its disk, and the agent to show it", func() bool {
		st, ok := s.volume("disk")
		ag := shipperStatus(t, p.jroot, "disk")
		return ok && strings.Contains(st.Throttled, "site disk full") && strings.Contains(ag.SiteDiskFull, "site disk full") &&
			ag.Tracker.JournalBytes > 0
	})
	if out := run(t, binary, "status", "--journal-dir", p.jroot); !strings.Contains(out, "site disk full: the recovery site refuses segments") {
		t.Fatalf("lifeboat status while the site's disk is full:\n%s", out)
	}
	if !regexp.MustCompile(`shipping paused .*site disk full: .*--min-free.* \(503 Service Unavailable\)`).MatchString(p.a.Output()) {
		t.Fatalf("the agent's log does not show the 503 and why:\n%s", p.a.Output())
	}
	// Logged once per episode, not per refused segment: the applier can
	// free room and end an episode before the next begins, so count
	// episodes, each a start and (but the last) an end.
	if log := s.log(); !throttledPerEpisode(log) || !strings.Contains(log, "throttle=site_disk_full") {
		t.Fatalf("want a 'throttling agents' line per episode for the disk:\n%s", log)
	}
	unballast()
	seq, _ := p.checkLatest(start)
	t.Logf("after the throttle: point %d equals the source", seq)
	if !strings.Contains(s.log(), "throttling ended") {
		t.Fatalf("the end of the throttling is not in the server's log:\n%s", s.log())
	}

	// Phase 2: ENOSPC in the apply. With 64 KiB free, a write-zeroes of
	// 256 KiB over the data of phase 1 is a ZERO record of a few bytes:
	// the throttle lets its segment in (it fits, and there is no reserve),
	// the spool takes a block or two, and applying it needs 258 KiB of
	// before-images in the undo log of the last point first. The disk is
	// then full: the next segment is refused, and the applier waits for
	// room rather than reopen its replica again and again.
	unballast = ballast(t, mnt, 64<<10)
	start = time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -z 0 256k", "-c", "flush", p.uri)
	waitFor(t, 2*time.Minute, "an apply to fail on the full disk", func() bool {
		st, ok := s.volume("disk")
		return ok && strings.Contains(st.ApplyError, "no space left on device")
	})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 512M 64k", "-c", "flush", p.uri)
	waitFor(t, 2*time.Minute, "the site to refuse the next segment, and the agent to show it", func() bool {
		st, ok := s.volume("disk")
		return ok && strings.Contains(st.Throttled, "site disk full") &&
			strings.Contains(shipperStatus(t, p.jroot, "disk").SiteDiskFull, "site disk full")
	})
	if n := strings.Count(s.log(), "replica reopened after a storage failure"); n > 10 {
		t.Fatalf("the replica was reopened %d times while the disk stayed full:\n%s", n, s.log())
	}
	unballast()
	seq, _ = p.checkLatest(start)
	t.Logf("after ENOSPC in the apply: point %d equals the source", seq)
	if !strings.Contains(s.log(), "replica reopened after a storage failure") {
		t.Fatalf("no reopen in the server's log:\n%s", s.log())
	}
	if p.a.cmd.Process.Pid != agentPid || s.srv.cmd.Process.Pid != serverPid || len(s.past) != 0 {
		t.Fatalf("a process was restarted")
	}
	for _, proc := range []*agentProc{p.a, s.srv} {
		select {
		case <-proc.gone:
			t.Fatalf("%s exited:\n%s", proc.cmd.Args[1], proc.Output())
		default:
		}
	}
}

// throttledPerEpisode reports whether log has at least one "throttling
// agents" line and one per throttling episode: as many as "throttling
// ended" lines, or one more while an episode lasts.
func throttledPerEpisode(log string) bool {
	starts, ends := strings.Count(log, "throttling agents"), strings.Count(log, "throttling ended")
	return starts >= 1 && (starts == ends || starts == ends+1)
}
