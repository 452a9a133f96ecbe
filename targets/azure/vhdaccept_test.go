package azure_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// qemuCompare runs qemu-img compare of a VHD against a raw image and fails
// unless it says they are identical.
func qemuCompare(t *testing.T, qemuImg, vhdPath, rawPath string) {
	t.Helper()
	out, err := exec.Command(qemuImg, "compare", "-f", "vpc", "-F", "raw", vhdPath, rawPath).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", filepath.Base(vhdPath), filepath.Base(rawPath), err, out)
	}
	if !strings.Contains(string(out), "Images are identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
}

// TestVHDAcceptance: a recovery point's snapshot, downloaded as a file, is
// a fixed VHD that qemu-img reads as the volume's size and content at the
// point (not at the latest state), and so is its failover clone.
func TestVHDAcceptance(t *testing.T) {
	qemuImg := requireTool(t, "qemu-img")
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	tg := newTarget(t, s, cont, azure.Options{})
	const size = 48 << 20
	info := targets.VolumeInfo{ID: "7a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d", Name: "data", Size: size, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()

	// Initial replication: per MiB random data, zero-filled data, a ZERO
	// extent, or nothing; then scattered changes.
	m := newModel(size, 48)
	for off := int64(0); off < size; off += 4 << 20 {
		var exts []targets.Extent
		for o := off; o < off+4<<20; o += 1 << 20 {
			switch m.rng.IntN(4) {
			case 0, 1:
				exts = append(exts, targets.Extent{Off: o, Data: m.random(1 << 20)})
			case 2:
				exts = append(exts, targets.Extent{Off: o, Data: make([]byte, 1<<20)})
			case 3:
				exts = append(exts, targets.Extent{Off: o, Len: 1 << 20})
			}
		}
		m.apply(t, rep, exts)
	}
	m.scatter(t, rep, 60)
	if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rawPath := filepath.Join(dir, "source.raw")
	if err := os.WriteFile(rawPath, m.data, 0o600); err != nil {
		t.Fatal(err)
	}
	// Changes after the point must not show in it.
	m.scatter(t, rep, 60)
	m.apply(t, rep, []targets.Extent{{Off: 0, Data: m.random(4 << 20)}})
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 2}); err != nil {
		t.Fatal(err)
	}

	url, err := tg.ClonePoint(ctx, info.ID, 1, "data-failover")
	if err != nil {
		t.Fatalf("ClonePoint: %v", err)
	}
	snapPath := filepath.Join(dir, "point.vhd")
	downloadFile(t, snapshotOf(t, containerClient(t, s, cont), "lb/"+info.ID+".vhd", 1).BlobClient(), snapPath)
	clonePath := filepath.Join(dir, "clone.vhd")
	downloadFile(t, cloneClient(t, s, url), clonePath)
	for _, p := range []string{snapPath, clonePath} {
		if got := qemuVirtualSize(t, qemuImg, p); got != size {
			t.Fatalf("%s: qemu-img virtual-size = %d, want %d", filepath.Base(p), got, size)
		}
		qemuCompare(t, qemuImg, p, rawPath)
	}
	// The check can fail: the latest content differs from the point.
	latestPath := filepath.Join(dir, "latest.raw")
	if err := os.WriteFile(latestPath, m.data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(qemuImg, "compare", "-f", "vpc", "-F", "raw", snapPath, latestPath).CombinedOutput(); err == nil {
		t.Fatalf("qemu-img compare finds the point equal to the latest content: %s", out)
	}
}
