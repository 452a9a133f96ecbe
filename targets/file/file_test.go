package file_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"lifeboat/hrl/hrltest"

	"lifeboat/targets"
	"lifeboat/targets/file"
	"lifeboat/targets/targettest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestConformance(t *testing.T) {
	targettest.Run(t, func(t *testing.T) targets.Target {
		tg := file.New(targettest.TempDir(t))
		tg.Logger = quiet
		return tg
	})
}

func openCrashFS(t *testing.T, fsys *hrltest.CrashFS) (*file.Target, targets.Replica) {
	t.Helper()
	tg := crashTarget(fsys)
	rep, err := tg.Open(ctx, crashInfo)
	if err != nil {
		t.Fatal(err)
	}
	return tg, rep
}

// TestLayout checks the files an admin relies on: replica.img holds the
// latest content (loop-mountable after a failover), state.json is plain
// JSON with the volume, and each point has its undo log.
func TestLayout(t *testing.T) {
	fsys := hrltest.New()
	tg, rep := openCrashFS(t, fsys)
	defer tg.Close()
	want := make([]byte, crashSize)
	for i := range want[:8192] {
		want[i] = byte(i)
	}
	apply(t, rep, targets.Extent{Off: 0, Data: want[:8192]})
	if err := rep.CreatePoint(ctx, pointOf(1)); err != nil {
		t.Fatal(err)
	}
	apply(t, rep, targets.Extent{Off: 4096, Len: 4096, Trim: true})
	clear(want[4096:8192])
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 2}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(crashDir, crashInfo.ID)
	img, err := fsys.ReadFile(filepath.Join(dir, "replica.img"))
	if err != nil || !bytes.Equal(img, want) {
		t.Fatalf("replica.img is not the latest content (err %v)", err)
	}
	b, err := fsys.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Volume targets.VolumeInfo
		Seq    uint64
		Points []struct{ Seq uint64 }
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Volume != crashInfo || st.Seq != 2 || len(st.Points) != 1 {
		t.Fatalf("state.json = %s (%v)", b, err)
	}
	u, err := fsys.ReadFile(filepath.Join(dir, "undo", "0000000000000001.undo"))
	if err != nil || len(u) != 32+4096 {
		t.Fatalf("undo log of point 1: %d bytes, %v; want one entry of 32+4096", len(u), err)
	}
}

func apply(t *testing.T, rep targets.Replica, exts ...targets.Extent) {
	t.Helper()
	if err := rep.Apply(ctx, exts); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptUndoLog: damage to an undo log is an error, never skipped.
func TestCorruptUndoLog(t *testing.T) {
	fsys := hrltest.New()
	tg, rep := openCrashFS(t, fsys)
	data := bytes.Repeat([]byte{7}, 3*4096)
	apply(t, rep, targets.Extent{Off: 0, Data: data})
	if err := rep.CreatePoint(ctx, pointOf(1)); err != nil {
		t.Fatal(err)
	}
	apply(t, rep, targets.Extent{Off: 0, Data: make([]byte, 3*4096)}, targets.Extent{Off: 5 * 4096, Data: data[:10]})
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 2}); err != nil {
		t.Fatal(err)
	}
	tg.Close()
	log := filepath.Join(crashDir, crashInfo.ID, "undo", "0000000000000001.undo")

	// A damaged header before the recorded length: Open refuses.
	fsys.FlipByte(log, 32+4096+9)
	_, err := crashTarget(fsys).Open(ctx, crashInfo)
	if !errors.Is(err, file.ErrCorrupt) {
		t.Fatalf("Open with a damaged undo log header: %v, want ErrCorrupt", err)
	}
	fsys.FlipByte(log, 32+4096+9)

	// Damaged data: reading the point fails; other blocks still read.
	fsys.FlipByte(log, 32+100)
	tg, rep = openCrashFS(t, fsys)
	defer tg.Close()
	pr, err := rep.OpenPoint(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pr.ReadAt(make([]byte, 10), 0); !errors.Is(err, file.ErrCorrupt) {
		t.Fatalf("ReadAt of a damaged entry: %v, want ErrCorrupt", err)
	}
	p := make([]byte, 4096)
	if _, err := pr.ReadAt(p, 4096); err != nil || !bytes.Equal(p, data[:4096]) {
		t.Fatalf("ReadAt of an intact block: %v", err)
	}
}

// TestZeroPunchesHoles: zero extents free space in replica.img; with a
// point, their before-image goes to the undo log first.
func TestZeroPunchesHoles(t *testing.T) {
	tg := file.New(t.TempDir())
	tg.Logger = quiet
	defer tg.Close()
	const size = 4 << 20
	rep, err := tg.Open(ctx, targets.VolumeInfo{ID: "holes", Size: size})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x5a}, size)
	apply(t, rep, targets.Extent{Off: 0, Data: data})
	usage := func() int64 {
		u, err := rep.Usage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	if err := rep.Commit(ctx, targets.State{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if u := usage(); u < size {
		t.Fatalf("usage %d after writing %d bytes", u, size)
	}
	apply(t, rep, targets.Extent{Off: 0, Len: size / 2})
	if u := usage(); u > size/2+64<<10 {
		t.Fatalf("usage %d after zeroing half of %d bytes", u, size)
	}
	if err := rep.CreatePoint(ctx, targets.Point{Seq: 2}); err != nil {
		t.Fatal(err)
	}
	apply(t, rep, targets.Extent{Off: 0, Len: size, Trim: true})
	if u := usage(); u > size/2+64<<10 || u < size/2 {
		t.Fatalf("usage %d: want the undo log's half of %d bytes only", u, size)
	}
	pr, err := rep.OpenPoint(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := pr.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:size/2], make([]byte, size/2)) || !bytes.Equal(got[size/2:], data[size/2:]) {
		t.Fatal("point 2 does not read its content after the trim")
	}
}

func TestOpenRejectsBadID(t *testing.T) {
	tg := file.New(t.TempDir())
	for _, id := range []string{"", "..", "a/b", "../x"} {
		if _, err := tg.Open(ctx, targets.VolumeInfo{ID: id, Size: 4096}); err == nil {
			t.Errorf("Open with volume id %q succeeded", id)
		}
	}
}
