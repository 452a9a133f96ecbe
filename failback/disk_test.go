package failback

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

const (
	volSize  = 1 << 20
	diskSize = volSize + 4096 // the disk may be bigger than the volume
)

var vol = targets.VolumeInfo{ID: "0b6f6c1e-vol-a", Name: "sda", Machine: "recovery-site", Size: volSize, BlockSize: 4096}

// setup makes a primary disk of diskSize bytes of 0xAA and a target over it.
func setup(t *testing.T) (disk, stateDir string, tg *DiskTarget) {
	t.Helper()
	dir := t.TempDir()
	disk, stateDir = filepath.Join(dir, "sda.img"), filepath.Join(dir, "state")
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0xAA}, diskSize), 0o600); err != nil {
		t.Fatal(err)
	}
	return disk, stateDir, newTarget(t, stateDir, disk)
}

func newTarget(t *testing.T, stateDir, disk string) *DiskTarget {
	t.Helper()
	tg, err := NewDiskTarget(stateDir, []Disk{{Info: vol, Path: disk}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

func open(t *testing.T, tg *DiskTarget) targets.Replica {
	t.Helper()
	r, err := tg.Open(context.Background(), targets.VolumeInfo{ID: vol.ID, Name: "other-name", Machine: "someone", Size: volSize, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readDisk(t *testing.T, disk string, off, n int64) []byte {
	t.Helper()
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	return b[off : off+n]
}

func TestDiskApplyCommitReopen(t *testing.T) {
	ctx := context.Background()
	disk, stateDir, tg := setup(t)
	r := open(t, tg)
	if got := r.Info(); got != vol {
		t.Fatalf("Info = %+v, want the configured %+v", got, vol)
	}
	data := bytes.Repeat([]byte("lifeboat"), 512)
	if err := r.Apply(ctx, []targets.Extent{{Off: 8192, Data: data}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, targets.State{Generation: 3, Seq: 42}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	tg.Close()
	if fi, err := os.Stat(filepath.Join(stateDir, vol.ID+".json")); err != nil || fi.Mode().Perm() != hrl.PrivateFile {
		t.Fatalf("state file: %v, %v; want mode 0600", fi, err)
	}
	if fi, err := os.Stat(stateDir); err != nil || fi.Mode().Perm() != hrl.PrivateDir {
		t.Fatalf("state dir: %v, %v; want mode 0700", fi, err)
	}

	r = open(t, newTarget(t, stateDir, disk))
	st, err := r.State(ctx)
	if want := (targets.State{Generation: 3, Seq: 42}); err != nil || st != want {
		t.Fatalf("State after reopen = %+v, %v; want %+v", st, err, want)
	}
	if got := readDisk(t, disk, 8192, int64(len(data))); !bytes.Equal(got, data) {
		t.Fatal("applied bytes not on the disk")
	}
	if got := readDisk(t, disk, 0, 8192); !bytes.Equal(got, bytes.Repeat([]byte{0xAA}, 8192)) {
		t.Fatal("bytes outside the extent changed")
	}
}

func TestDiskOpenRefused(t *testing.T) {
	ctx := context.Background()
	_, _, tg := setup(t)
	for _, tc := range []struct {
		name    string
		info    targets.VolumeInfo
		want    error
		message []string
	}{
		{"unknown id", targets.VolumeInfo{ID: "nope", Size: volSize, BlockSize: 4096}, targets.ErrNotFound,
			[]string{"nope", "sda (id " + vol.ID + ")", "primary volume the failover came from"}},
		{"size", targets.VolumeInfo{ID: vol.ID, Size: volSize * 2, BlockSize: 4096}, ErrGeometry,
			[]string{"the primary volume sda is 1048576 bytes, the failover volume is 2097152 bytes"}},
		{"block size", targets.VolumeInfo{ID: vol.ID, Size: volSize, BlockSize: 512}, ErrGeometry,
			[]string{"block size 4096", "512"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tg.Open(ctx, tc.info)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open = %v, want %v", err, tc.want)
			}
			for _, m := range tc.message {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
		})
	}
}

func TestDiskOpenMissingOrShortDisk(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.img")
	if _, err := newTarget(t, filepath.Join(dir, "s1"), missing).Open(context.Background(), vol); err == nil {
		t.Fatal("Open of a missing disk succeeded")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open created the disk: %v", err)
	}
	short := filepath.Join(dir, "short.img")
	if err := os.WriteFile(short, make([]byte, volSize-1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newTarget(t, filepath.Join(dir, "s2"), short).Open(context.Background(), vol); !errors.Is(err, ErrGeometry) {
		t.Fatalf("Open of a short disk = %v, want ErrGeometry", err)
	}
}

func TestDiskInUse(t *testing.T) {
	disk, stateDir, tg := setup(t)
	r := open(t, tg)
	if _, err := tg.Open(context.Background(), vol); !errors.Is(err, targets.ErrInUse) {
		t.Fatalf("second Open = %v, want ErrInUse", err)
	}
	if _, err := newTarget(t, stateDir, disk).Open(context.Background(), vol); !errors.Is(err, targets.ErrInUse) {
		t.Fatalf("Open by a second target on the same state = %v, want ErrInUse", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, tg).Close()
}

func TestDiskPoints(t *testing.T) {
	ctx := context.Background()
	_, _, tg := setup(t)
	r := open(t, tg)
	p1 := targets.Point{Seq: 10, Generation: 1, Kind: hrl.TagCrash, Name: "one", Time: time.Unix(100, 0).UTC()}
	p2 := targets.Point{Seq: 20, Generation: 1, Kind: hrl.TagCrash, Name: "two", Time: time.Unix(200, 0).UTC()}
	if err := r.Apply(ctx, []targets.Extent{{Off: 0, Data: []byte("first")}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []targets.Point{p1, p2, p2} { // the second p2 is a retry
		if err := r.CreatePoint(ctx, p); err != nil {
			t.Fatalf("CreatePoint %d: %v", p.Seq, err)
		}
	}
	other := p2
	other.Generation = 2
	if err := r.CreatePoint(ctx, other); !errors.Is(err, targets.ErrPointExists) {
		t.Fatalf("CreatePoint with another generation = %v, want ErrPointExists", err)
	}
	if st, _ := r.State(ctx); st != (targets.State{Generation: 1, Seq: 20}) {
		t.Fatalf("State = %+v, want the point's", st)
	}
	ps, err := r.Points(ctx)
	if err != nil || len(ps) != 1 || !targets.SamePoint(ps[0], p2) {
		t.Fatalf("Points = %+v, %v; want only %+v", ps, err, p2)
	}
	if _, err := r.OpenPoint(ctx, 10); !errors.Is(err, targets.ErrNotFound) {
		t.Fatalf("OpenPoint of a superseded point = %v, want ErrNotFound", err)
	}
	pr, err := r.OpenPoint(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if pr.Size() != volSize || pr.Point().Seq != 20 {
		t.Fatalf("point reader: size %d, seq %d", pr.Size(), pr.Point().Seq)
	}
	b := make([]byte, 8)
	if n, err := pr.ReadAt(b, 0); err != nil || string(b[:n]) != "first\xAA\xAA\xAA" {
		t.Fatalf("ReadAt = %q, %v", b[:n], err)
	}
	if n, err := pr.ReadAt(b, volSize-4); n != 4 || err != io.EOF {
		t.Fatalf("ReadAt at the end = %d, %v; want 4, EOF (bounded to the volume)", n, err)
	}

	// Anything applied after the point: the disk is no longer the point.
	if err := r.Apply(ctx, []targets.Extent{{Off: 0, Data: []byte("later")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := pr.ReadAt(b, 0); !errors.Is(err, targets.ErrNotFound) {
		t.Fatalf("ReadAt after Apply = %v, want ErrNotFound", err)
	}
	if err := r.Commit(ctx, targets.State{Generation: 1, Seq: 25}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.OpenPoint(ctx, 20); !errors.Is(err, targets.ErrNotFound) {
		t.Fatalf("OpenPoint after a later Commit = %v, want ErrNotFound", err)
	}
	for _, seq := range []uint64{99, 20, 20} {
		if err := r.DeletePoint(ctx, seq); err != nil {
			t.Fatalf("DeletePoint %d: %v", seq, err)
		}
	}
	if ps, _ := r.Points(ctx); len(ps) != 0 {
		t.Fatalf("Points after DeletePoint = %+v", ps)
	}
}

func TestDiskPointSurvivesReopenOnlyIfIntact(t *testing.T) {
	ctx := context.Background()
	disk, stateDir, tg := setup(t)
	r := open(t, tg)
	p := targets.Point{Seq: 5, Generation: 1, Kind: hrl.TagCrash, Name: "p"}
	if err := r.CreatePoint(ctx, p); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r = open(t, newTarget(t, stateDir, disk))
	pr, err := r.OpenPoint(ctx, 5)
	if err != nil {
		t.Fatalf("OpenPoint after reopen: %v", err)
	}
	pr.Close()
	// Applied but not committed, then a crash: the disk may hold later bytes.
	if err := r.Apply(ctx, []targets.Extent{{Off: 0, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r = open(t, newTarget(t, stateDir, disk))
	if _, err := r.OpenPoint(ctx, 5); !errors.Is(err, targets.ErrNotFound) {
		t.Fatalf("OpenPoint after an uncommitted Apply and reopen = %v, want ErrNotFound", err)
	}
	if st, _ := r.State(ctx); st.Seq != 5 {
		t.Fatalf("State = %+v, want seq 5", st)
	}
}

func TestDiskZerosAndRange(t *testing.T) {
	ctx := context.Background()
	disk, _, tg := setup(t)
	r := open(t, tg)
	if err := r.Apply(ctx, []targets.Extent{{Off: 4096, Len: 200 << 10}, {Off: volSize - 10, Len: 10, Trim: true}}); err != nil {
		t.Fatal(err)
	}
	if got := readDisk(t, disk, 4096, 200<<10); !bytes.Equal(got, make([]byte, 200<<10)) {
		t.Error("zero extent not written as zeros")
	}
	if got := readDisk(t, disk, volSize-11, 12); !bytes.Equal(got, append(append([]byte{0xAA}, make([]byte, 10)...), 0xAA)) {
		t.Errorf("trim extent: got %x", got)
	}
	for _, e := range []targets.Extent{
		{Off: volSize - 1, Data: []byte("ab")},
		{Off: volSize, Len: 1},
		{Off: -1, Data: []byte("a")},
		{Off: 0, Len: -1},
	} {
		if err := r.Apply(ctx, []targets.Extent{{Off: 0, Data: []byte("ok")}, e}); !errors.Is(err, targets.ErrOutOfRange) {
			t.Errorf("Apply %+v = %v, want ErrOutOfRange", e, err)
		}
	}
	if got := readDisk(t, disk, 0, 2); bytes.Equal(got, []byte("ok")) {
		t.Error("a refused Apply wrote its valid extents")
	}
}

func TestDiskNeverResized(t *testing.T) {
	ctx := context.Background()
	disk, _, tg := setup(t)
	r := open(t, tg)
	if err := r.Apply(ctx, []targets.Extent{{Off: volSize - 4096, Data: make([]byte, 4096)}, {Off: 0, Len: volSize}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, targets.State{Generation: 1, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if u, err := r.Usage(ctx); err != nil || u != diskSize {
		t.Fatalf("Usage = %d, %v; want the disk's %d", u, err, diskSize)
	}
	r.Close()
	tg.Close()
	if fi, err := os.Stat(disk); err != nil || fi.Size() != diskSize {
		t.Fatalf("disk size after use: %v, %v; want %d", fi.Size(), err, diskSize)
	}
	if got := readDisk(t, disk, volSize, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0xAA}, 4096)) {
		t.Fatal("bytes past the volume changed")
	}
}

func TestDiskClosedAndFixedMachine(t *testing.T) {
	ctx := context.Background()
	_, _, tg := setup(t)
	r := open(t, tg)
	if err := r.SetMachine(ctx, "another"); !errors.Is(err, ErrMachineFixed) {
		t.Fatalf("SetMachine = %v, want ErrMachineFixed", err)
	}
	if vs, err := tg.Volumes(ctx); err != nil || len(vs) != 1 || vs[0] != vol {
		t.Fatalf("Volumes = %+v, %v", vs, err)
	}
	if err := tg.Close(); err != nil { // closes r too
		t.Fatal(err)
	}
	if _, err := r.State(ctx); !errors.Is(err, targets.ErrClosed) {
		t.Errorf("State after Close = %v, want ErrClosed", err)
	}
	if err := r.Apply(ctx, nil); !errors.Is(err, targets.ErrClosed) {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
	if _, err := r.OpenPoint(ctx, 0); !errors.Is(err, targets.ErrClosed) {
		t.Errorf("OpenPoint after Close = %v, want ErrClosed", err)
	}
	if _, err := tg.Open(ctx, vol); !errors.Is(err, targets.ErrClosed) {
		t.Errorf("Open after the target's Close = %v, want ErrClosed", err)
	}
}

func TestNewDiskTargetRejects(t *testing.T) {
	dir := t.TempDir()
	noMachine := vol
	noMachine.Machine = ""
	badID := vol
	badID.ID = "../x"
	for name, disks := range map[string][]Disk{
		"no machine": {{Info: noMachine, Path: "/dev/null"}},
		"bad id":     {{Info: badID, Path: "/dev/null"}},
		"no path":    {{Info: vol}},
		"twice":      {{Info: vol, Path: "/a"}, {Info: vol, Path: "/b"}},
	} {
		if _, err := NewDiskTarget(dir, disks); err == nil {
			t.Errorf("%s: NewDiskTarget accepted %+v", name, disks)
		}
	}
}
