package tracker_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/hrl"
	"lifeboat/internal/testenv"
	"lifeboat/tracker"
)

// A block device as the backing store (what admins protect: --volume
// db=/dev/sdb): here a loop device over a file. Size comes from the device,
// trim and write-zeroes use fallocate on the device (or zeros), and the
// journal replays to the device's bytes.
func TestBlockDeviceBacking(t *testing.T) {
	testenv.Root(t, "a loop device")
	testenv.Tools(t, "losetup")
	dir := t.TempDir()
	file := filepath.Join(dir, "dev.img")
	os.WriteFile(file, nil, 0o644)
	os.Truncate(file, 32<<20)
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })

	v := tracker.NewVolume(dev, filepath.Join(dir, "journal"))
	v.Logger = quiet
	openVolume(t, v)
	if v.Size() != 32<<20 {
		t.Fatalf("size of %s = %d, want %d", dev, v.Size(), 32<<20)
	}
	if _, err := v.WriteAt(fill(3<<20, 0xd1), 1<<20+512); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(2<<20, 512<<10); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteZeroes(3<<20+4096, 8192); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Extents(0, v.Size()); err != nil {
		t.Fatalf("extents of a block device: %v", err)
	}
	if _, err := v.Tag(hrl.TagCrash, "dev"); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	got := replayAll(t, hrl.OSFS{}, v, make([]byte, 32<<20))
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("journal replay differs from the block device")
	}
	if !bytes.Equal(want[2<<20:2<<20+512<<10], make([]byte, 512<<10)) {
		t.Fatal("trimmed range of the device does not read as zeros")
	}
}
