package file_test

import (
	"bytes"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/file"
)

// A replica directory is 0700 and its files (replica.img, state.json, undo
// logs and their indexes, lock) 0600; one left readable by an earlier
// version is tightened when the replica opens, with one log line.
func TestReplicaIsPrivate(t *testing.T) {
	root := t.TempDir()
	info := targets.VolumeInfo{ID: "0b7e4d0c-modes", Name: "modes", Size: 1 << 20, BlockSize: 4096}
	dir := filepath.Join(root, info.ID)
	var log bytes.Buffer
	open := func() (*file.Target, targets.Replica) {
		tg := file.New(root)
		tg.Logger = slog.New(slog.NewTextHandler(&log, nil))
		rep, err := tg.Open(ctx, info)
		if err != nil {
			t.Fatal(err)
		}
		return tg, rep
	}
	tg, rep := open()
	data := bytes.Repeat([]byte{9}, 8192)
	for seq := uint64(1); seq <= 3; seq++ {
		apply(t, rep, targets.Extent{Off: 0, Data: data})
		if err := rep.CreatePoint(ctx, pointOf(seq)); err != nil {
			t.Fatal(err)
		}
		data = bytes.Repeat([]byte{byte(seq)}, 8192)
	}
	apply(t, rep, targets.Extent{Off: 0, Data: data})
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 4}); err != nil {
		t.Fatal(err)
	}
	tg.Close()

	var names []string
	check := func() {
		names = names[:0]
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := d.Info()
			want := fs.FileMode(0o600)
			if d.IsDir() {
				want = fs.ModeDir | 0o700
			}
			if fi.Mode() != want {
				t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
			}
			names = append(names, filepath.Base(p))
			return nil
		})
	}
	check()
	for _, want := range []string{"replica.img", "state.json", "lock", "undo", "0000000000000001.undo", "0000000000000001.idx"} {
		if !slices.Contains(names, want) {
			t.Fatalf("no %s among %q", want, names)
		}
	}
	if strings.Contains(log.String(), "made private") {
		t.Fatalf("a new replica was tightened:\n%s", log.String())
	}

	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		mode := fs.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	})
	tg, _ = open()
	tg.Close()
	check()
	if n := strings.Count(log.String(), "replica made private"); n != 1 {
		t.Fatalf("%d log lines about tightening the replica, want 1:\n%s", n, log.String())
	}
	tg, _ = open()
	tg.Close()
	if n := strings.Count(log.String(), "replica made private"); n != 1 {
		t.Fatalf("a private replica was tightened again:\n%s", log.String())
	}
}
