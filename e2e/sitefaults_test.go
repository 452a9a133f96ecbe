package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"lifeboat/pipeline"
	"lifeboat/targets/azure/azuritetest"
)

// 'points export' with the server killed mid-download exits non-zero,
// says how far it got, and leaves no file that looks complete.
func TestPointsExportServerKilledMidDownload(t *testing.T) {
	s := newSite(t)
	protect(t, s, 4<<30, 16<<20)
	dir := t.TempDir()
	out := filepath.Join(dir, "disk.img")
	cmd := exec.Command(binary, "points", "export", "--server", s.url(), "--data-dir", s.dir, "--volume", "disk", "--out", out)
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The image's data ends at imageDataAt+16 MiB; zeros follow up to 4 GiB
	// (streamed, not written: the file stays sparse).
	waitFor(t, time.Minute, "the export to have the image's data", func() bool {
		parts, _ := filepath.Glob(filepath.Join(dir, ".disk.img.partial-*"))
		if len(parts) != 1 {
			return false
		}
		fi, err := os.Stat(parts[0])
		return err == nil && fi.Size() >= imageDataAt+16<<20
	})
	s.srv.cmd.Process.Signal(syscall.SIGKILL)
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("points export did not end after the server was killed")
	}
	t.Logf("points export: %v\n%s", err, buf.String())
	if code := exitCode(err); code != 1 || !strings.Contains(buf.String(), "nothing was written to "+out) {
		t.Fatalf("points export with the server killed: exit %d, want 1 and a clear message", code)
	}
	if strings.Contains(buf.String(), "sha256") {
		t.Fatal("points export printed a sha256 for an incomplete image")
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 0 {
		t.Fatalf("files left after a failed export: %v", left)
	}
}

// A server restarted with a volume whose replica cannot be opened serves
// the other volumes and lists the bad one as failed with its reason.
func TestServerRestartsWithAnUnopenableVolume(t *testing.T) {
	need(t, "qemu-io")
	s := newSite(t)
	dir := t.TempDir()
	imgs := map[string]string{"good": filepath.Join(dir, "good.img"), "bad": filepath.Join(dir, "bad.img")}
	for _, img := range imgs {
		makeImage(t, img, 40<<20, 2<<20)
	}
	a := startAgent(t, append([]string{"--volume", "good=" + imgs["good"], "--volume", "bad=" + imgs["bad"],
		"--journal-dir", filepath.Join(dir, "journal"), "--segment-age", "200ms", "--tag-interval", "1s", "--max-backoff", "2s"},
		s.agentArgs()...)...)
	s.waitPoint("good", time.Time{}, time.Minute)
	s.waitPoint("bad", time.Time{}, time.Minute)
	st, _ := s.volume("bad")
	s.stop(syscall.SIGTERM)
	state := filepath.Join(s.dir, "replicas", st.Info.ID, "state.json")
	if err := os.WriteFile(state, []byte(`{"volume": `), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	out := run(t, binary, "volume", "list", "--server", s.url(), "--data-dir", s.dir)
	t.Logf("volume list:\n%s", out)
	if !strings.Contains(out, "FAILED") || !strings.Contains(out, "state.json") {
		t.Fatalf("volume list does not show the damaged volume as failed:\n%s", out)
	}
	if !strings.Contains(s.log(), "volume cannot be opened") {
		t.Fatalf("the server did not log the damaged volume:\n%s", s.log())
	}
	t0 := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 4M 4M", a.uri["good"])
	seq, want := s.settle("good", filepath.Join(dir, "journal"), imgs["good"], t0)
	if got := s.export("good", fmt.Sprint(seq)); got != want {
		t.Fatalf("point %d of the good volume: %s, source %s", seq, got, want)
	}
	if pts := s.points("good"); len(pts) < 2 {
		t.Fatalf("good volume has %d points after the restart", len(pts))
	}
	if got, ok := s.volume("bad"); ok || got.AppliedSeq != 0 {
		t.Fatalf("the damaged volume answers as if it were fine: %+v", got)
	}
}

// A volume larger than a page blob holds is refused with 400 before the
// site stores anything of it: no blob, no spool directory.
func TestAzureOversizedVolumeIsRefused(t *testing.T) {
	az := azuritetest.Start(t)
	s, cc := azureSite(t, az, nil)
	const id = "0c7b6d2e-8f1a-4b3c-9d5e-6f7a8b9c0d1e"
	code, body := forge(t, s, s.clientAs("web01"), id, 9<<40)
	if code != http.StatusBadRequest || !strings.Contains(body, "at most") {
		t.Fatalf("a 9 TiB volume: HTTP %d %s; want 400 naming the target's limit", code, body)
	}
	t.Logf("9 TiB volume: %s", body)
	pager := cc.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{})
	for pager.More() {
		resp, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n := len(resp.Segment.BlobItems); n != 0 {
			t.Fatalf("%d blobs in the container after a refused volume", n)
		}
	}
	if _, err := os.Stat(filepath.Join(s.dir, "spool", id)); !os.IsNotExist(err) {
		t.Fatalf("spool directory of the refused volume: %v", err)
	}
	var vols []pipeline.VolumeStatus
	js := run(t, binary, "volume", "list", "--server", s.url(), "--data-dir", s.dir, "--output", "json")
	if err := json.Unmarshal([]byte(js), &vols); err != nil || len(vols) != 0 {
		t.Fatalf("volume list after a refused volume: %v\n%s", err, js)
	}
}
