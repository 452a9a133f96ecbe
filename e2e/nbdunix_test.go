package e2e

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The agent serves NBD on a Unix socket (--nbd unix:PATH) of mode 0660:
// qemu-io, nbdcopy and fio work through nbd+unix:///NAME?socket=PATH; the
// journal, the server's replica and spool are private (0700 directories,
// 0600 files); an agent killed with -9 leaves its socket behind and a
// restarted one replaces it; a clean stop removes it.
func TestNBDOverUnixSocket(t *testing.T) {
	need(t, "qemu-io", "nbdcopy", "fio")
	s := newSite(t)
	sock := filepath.Join(t.TempDir(), "run", "nbd.sock")
	p := protect(t, s, 64<<20, 4<<20, "--nbd", "unix:"+sock)
	if want := "nbd+unix:///disk?socket=" + sock; p.uri != want {
		t.Fatalf("agent serves at %q, want %q", p.uri, want)
	}
	checkSocket(t, sock)

	// nbdcopy: a random file in and out, same sha256.
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	buf := make([]byte, 64<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", "--flush", src, p.uri)
	run(t, "nbdcopy", p.uri, back)
	if got, want := sha256File(t, back), sha256File(t, src); got != want {
		t.Fatalf("nbdcopy out has sha256 %s, in %s", got, want)
	}
	// qemu-io: write a pattern and read it back verified.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 8M 2M", "-c", "read -P 0x5a 8M 2M", "-c", "flush", p.uri)
	// fio through libnbd's URI, with verify.
	run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+p.uri, "--rw=randwrite", "--bs=16k",
		"--offset=16m", "--size=16m", "--iodepth=8", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--verify_state_save=0")
	seq, _ := p.checkLatest(time.Now().Add(-time.Second))
	t.Logf("point %d equals the source after nbdcopy, qemu-io and fio over the socket", seq)

	checkPrivate(t, filepath.Join(p.jroot, "disk"), "the agent's journal", ".hrl")
	replicas, _ := filepath.Glob(filepath.Join(s.dir, "replicas", "*"))
	if len(replicas) != 1 {
		t.Fatalf("replica directories %q, want one", replicas)
	}
	checkPrivate(t, replicas[0], "the server's replica", "replica.img")
	checkPrivate(t, filepath.Join(s.dir, "spool"), "the server's spool", "")

	// A second agent on the live socket is refused (exit 2), the first keeps it.
	other := t.TempDir()
	_, err := tryAgent(t, "--nbd", "unix:"+sock, "--volume", "other="+filepath.Join(other, "o.img")+",size=1MiB",
		"--journal-dir", filepath.Join(other, "j"))
	if err == nil || !strings.Contains(err.Error(), "another process serves") {
		t.Fatalf("second agent on a live socket: %v", err)
	}
	checkSocket(t, sock)

	// kill -9 leaves the socket file; the restarted agent replaces it and
	// serves the same data, on TCP as well when asked.
	if err := p.a.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent survived SIGKILL?")
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("after kill -9 the socket file is gone (%v): the restart would not show a stale one", err)
	}
	a := startAgent(t, append(append([]string{"--nbd", "127.0.0.1:0"}, p.args...), s.agentArgs()...)...) // p.args: --nbd unix:
	// The log line (stderr) may arrive after the serving lines (stdout).
	waitFor(t, 20*time.Second, "the restart to say it replaced the stale socket", func() bool {
		return strings.Contains(a.Output(), "stale socket")
	})
	checkSocket(t, sock)
	uris := regexp.MustCompile(`(?m)^serving disk \(.*\) at (\S+)$`)
	var got []string
	waitFor(t, 20*time.Second, "both listeners' serving lines", func() bool {
		got = nil
		for _, m := range uris.FindAllStringSubmatch(a.Output(), -1) {
			got = append(got, m[1])
		}
		return len(got) == 2
	})
	if got[1] != p.uri || !strings.HasPrefix(got[0], "nbd://127.0.0.1:") {
		t.Fatalf("restarted agent serves at %q, want %s and a TCP address", got, p.uri)
	}
	for _, uri := range got {
		run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 8M 2M", uri)
	}
	if err := a.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, a.Output())
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket still there after a clean stop (%v)", err)
	}
}

// checkSocket checks that path is a socket of mode 0660.
func checkSocket(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("%s: mode %v, want a socket with 0660", path, fi.Mode())
	}
}

// checkPrivate checks that dir and the directories under it are 0700 and
// its files 0600, and that a file whose name ends with must is among them.
func checkPrivate(t *testing.T, dir, what, must string) {
	t.Helper()
	found := must == ""
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // a segment deleted after its acknowledgement
		}
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = fs.ModeDir | 0o700
		}
		if fi.Mode() != want {
			t.Errorf("%s: %s has mode %v, want %v", what, p, fi.Mode(), want)
		}
		found = found || strings.HasSuffix(p, must)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Errorf("%s: no *%s under %s", what, must, dir)
	}
}
