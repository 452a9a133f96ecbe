package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"lifeboat/pipeline"
)

// Helpers of the test failover tests (issue 12): the recovery volumes the
// site serves over NBD and FUSE, and the loop devices and mounts over
// them, each undone by t.Cleanup even when the test fails.

// tfFreeAddr returns a loopback address nobody listens on at the moment,
// for a server that must come back on the same address after a restart.
func tfFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

var tfRecoveryNBDLine = regexp.MustCompile(`(?m)^recovery volumes served over NBD at (nbd://[^/\s]+)/\s*$`)

// recoveryNBD returns the nbd://HOST:PORT the site's running server serves
// recovery volumes at (it prints it right after it is ready).
func (s *site) tfRecoveryNBD() string {
	s.t.Helper()
	var addr string
	waitFor(s.t, 10*time.Second, "the server to print its recovery NBD address", func() bool {
		m := tfRecoveryNBDLine.FindStringSubmatch(s.srv.Output())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	return addr
}

// testFailover runs `lifeboat test-failover ARGS --output json` against the
// site and decodes its answer into v; it fails the test when the command
// fails.
func (s *site) tfTestFailover(v any, args ...string) {
	s.t.Helper()
	args = append(append([]string{"test-failover"}, args...), "--server", s.url(), "--data-dir", s.dir, "--output", "json")
	out, err := exec.Command(binary, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		s.t.Fatalf("lifeboat %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	if err := json.Unmarshal(out, v); err != nil {
		s.t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// startTest starts a test failover of volume at point (a seq, latest, …).
func (s *site) tfStartTest(volume, point string) pipeline.RecoveryState {
	s.t.Helper()
	var st pipeline.RecoveryState
	s.tfTestFailover(&st, "start", volume, "--point", point)
	return st
}

// cleanupTest ends the test failover of volume.
func (s *site) tfCleanupTest(volume string) pipeline.RecoveryState {
	s.t.Helper()
	var st pipeline.RecoveryState
	s.tfTestFailover(&st, "cleanup", volume)
	return st
}

// recoveryList is `lifeboat test-failover list`.
func (s *site) tfRecoveryList() []pipeline.RecoveryState {
	s.t.Helper()
	var list []pipeline.RecoveryState
	s.tfTestFailover(&list, "list")
	return list
}

// pointSum streams point seq of volume from the site's API into sha256
// (no file written).
func (s *site) tfPointSum(volume string, seq uint64) string {
	s.t.Helper()
	c := s.admin()
	c.Timeout = 2 * time.Minute
	resp, err := c.Get(fmt.Sprintf("%s/v1/volumes/%s/points/%d", s.url(), volume, seq))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		s.t.Fatalf("GET point %d of %s: %s\n%s", seq, volume, resp.Status, b)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		s.t.Fatalf("read point %d of %s: %v", seq, volume, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// replicaImage is the file target's replica of volume.
func (s *site) tfReplicaImage(volume string) string {
	s.t.Helper()
	st, ok := s.volume(volume)
	if !ok {
		s.t.Fatalf("the site has no volume %s", volume)
	}
	path := filepath.Join(s.dir, "replicas", st.Info.ID, "replica.img")
	if _, err := os.Stat(path); err != nil {
		s.t.Fatalf("replica of %s: %v", volume, err)
	}
	return path
}

// tfNBDSum reads a whole NBD export with nbdcopy into sha256.
func tfNBDSum(t *testing.T, uri string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nbdcopy", uri, "-")
	h := sha256.New()
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = h, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nbdcopy %s -: %v\n%s", uri, err, stderr.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// tfNBDExports lists, sorted, the exports an NBD server at uri
// (nbd://HOST:PORT) offers.
func tfNBDExports(t *testing.T, uri string) []string {
	t.Helper()
	out := run(t, "nbdinfo", "--list", "--json", uri)
	var list struct {
		Exports []struct {
			Name string `json:"export-name"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("nbdinfo --list --json %s: %v\n%s", uri, err, out)
	}
	names := []string{}
	for _, e := range list.Exports {
		names = append(names, e.Name)
	}
	slices.Sort(names)
	return names
}

// mounted reports whether dir is a mount point.
func tfMounted(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir = filepath.Clean(dir)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && tfUnescapeMount(fields[4]) == dir {
			return true
		}
	}
	return false
}

// tfUnescapeMount undoes the octal escapes of /proc/self/mountinfo.
func tfUnescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// tfUnmountAtEnd unmounts dir when the test ends, if it is still mounted
// then; lazily if it stays busy (a FUSE mount whose server was killed).
// Register it before whatever must be gone first (cleanups run last in,
// first out).
func tfUnmountAtEnd(t *testing.T, dir string) {
	t.Helper()
	t.Cleanup(func() {
		if !tfMounted(t, dir) {
			return
		}
		var out []byte
		var err error
		for range 30 { // a process killed a moment ago may still hold a file
			if out, err = exec.Command("umount", dir).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("umount %s: %v\n%s", dir, err, out)
		exec.Command("umount", "-l", dir).Run()
	})
}

// tfMountAt mounts dev on dir (made if missing) and unmounts it at the end
// of the test if it is still mounted then.
func tfMountAt(t *testing.T, dev, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tfUnmountAtEnd(t, dir)
	run(t, "mount", dev, dir)
}

// tfLoopDevice attaches a loop device over file and detaches it at the end
// of the test if it is still attached.
func tfLoopDevice(t *testing.T, file string) string {
	t.Helper()
	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", file))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("losetup -f --show %s: %q", file, dev)
	}
	t.Cleanup(func() {
		if tfLoopBacks(t, dev, file) {
			if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
				t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
			}
		}
	})
	return dev
}

// tfLoopBacks reports whether loop device dev is still attached over file.
func tfLoopBacks(t *testing.T, dev, file string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return false
	}
	back := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
	return back == file
}

// tfLoopsOver lists the loop devices over file. It reads sysfs rather
// than asking losetup -j, which finds nothing once the file is gone (a
// FUSE file removed under a loop device still backs it, "(deleted)").
func tfLoopsOver(t *testing.T, file string) []string {
	t.Helper()
	devs, err := filepath.Glob("/sys/block/loop*")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range devs {
		if dev := "/dev/" + filepath.Base(d); tfLoopBacks(t, dev, file) {
			out = append(out, dev)
		}
	}
	return out
}

// tfDetach detaches loop device dev and waits until it is gone.
func tfDetach(t *testing.T, dev, file string) {
	t.Helper()
	run(t, "losetup", "-d", dev)
	waitFor(t, 10*time.Second, "loop device "+dev+" to be detached from "+file, func() bool { return !tfLoopBacks(t, dev, file) })
}

// tfWriteRandomFiles writes n files of random sizes (4 KiB to 1.5 MiB, not
// block-aligned) and content named prefix-NN in dir, syncs them, and
// returns their sha256 by name.
func tfWriteRandomFiles(t *testing.T, dir, prefix string, n int) map[string]string {
	t.Helper()
	sums := map[string]string{}
	for i := range n {
		buf := make([]byte, 4<<10+mrand.IntN(1536<<10))
		rand.Read(buf)
		name := fmt.Sprintf("%s-%02d.bin", prefix, i)
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		sum := sha256.Sum256(buf)
		sums[name] = hex.EncodeToString(sum[:])
	}
	return sums
}

// tfCheckFiles checks that every file of sums is in dir with its sha256.
func tfCheckFiles(t *testing.T, dir string, sums map[string]string) {
	t.Helper()
	for name, want := range sums {
		if got := sha256File(t, filepath.Join(dir, name)); got != want {
			t.Fatalf("%s: sha256 %s, written with %s", filepath.Join(dir, name), got, want)
		}
	}
}
