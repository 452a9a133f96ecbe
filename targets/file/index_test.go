package file_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"lifeboat/hrl/hrltest"
	"lifeboat/targets"
	"lifeboat/targets/file"
)

// TestUndoIndex: a closed undo log's index file spares Open the scan; a
// damaged index is ignored and the log scanned instead.
func TestUndoIndex(t *testing.T) {
	fsys := hrltest.New()
	tg, rep := openCrashFS(t, fsys)
	models := map[uint64][]byte{}
	cur := bytes.Repeat([]byte{0xee}, crashSize)
	apply(t, rep, targets.Extent{Off: 0, Data: bytes.Clone(cur)})
	for seq := uint64(1); seq <= 6; seq++ {
		if seq%2 == 0 {
			if err := rep.CreatePoint(ctx, pointOf(seq)); err != nil {
				t.Fatal(err)
			}
			models[seq] = bytes.Clone(cur)
			continue
		}
		var exts []targets.Extent
		for b := int64(seq % 3); b < crashSize/4096; b += 2 {
			d := bytes.Repeat([]byte{byte(seq*16 + uint64(b))}, 4096)
			exts = append(exts, targets.Extent{Off: b * 4096, Data: d})
			copy(cur[b*4096:], d)
		}
		apply(t, rep, exts...)
	}
	apply(t, rep, targets.Extent{Off: 0, Len: crashSize})
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 7}); err != nil {
		t.Fatal(err)
	}
	tg.Close()
	undo := filepath.Join(crashDir, crashInfo.ID, "undo")
	idx2, log2 := filepath.Join(undo, "0000000000000002.idx"), filepath.Join(undo, "0000000000000002.undo")
	for _, name := range []string{idx2, filepath.Join(undo, "0000000000000004.idx")} {
		if _, err := fsys.ReadFile(name); err != nil {
			t.Fatalf("index of a closed undo log: %v", err)
		}
	}
	if _, err := fsys.ReadFile(filepath.Join(undo, "0000000000000006.idx")); err == nil {
		t.Fatal("the newest undo log, still receiving entries, has an index")
	}
	check := func() {
		t.Helper()
		tg, rep := openCrashFS(t, fsys)
		defer tg.Close()
		for seq, want := range models {
			pr, err := rep.OpenPoint(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, crashSize)
			if _, err := pr.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("point %d after reopen: %v, equal %v", seq, err, bytes.Equal(got, want))
			}
		}
	}
	check()

	// With the index intact, Open does not read the log: a damaged header
	// shows when the entry is read.
	fsys.FlipByte(log2, 9)
	tg, rep = openCrashFS(t, fsys)
	pr, err := rep.OpenPoint(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pr.ReadAt(make([]byte, crashSize), 0); !errors.Is(err, file.ErrCorrupt) {
		t.Fatalf("read through a damaged entry: %v, want ErrCorrupt", err)
	}
	tg.Close()
	// A damaged index is not used: the scan finds the damaged header.
	fsys.FlipByte(idx2, 40)
	if _, err := crashTarget(fsys).Open(ctx, crashInfo); !errors.Is(err, file.ErrCorrupt) {
		t.Fatalf("Open with a damaged index and log: %v, want ErrCorrupt", err)
	}
	fsys.FlipByte(log2, 9)
	check() // scanned
	fsys.FlipByte(idx2, 40)
	check() // indexed
}
