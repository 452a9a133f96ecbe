package tracker_test

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/tracker"
)

// privateModes checks that dir and the directories under it are 0700 and
// every file 0600, and returns how many files it saw.
func privateModes(t *testing.T, dir string) int {
	t.Helper()
	files := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fi, err := d.Info()
		if err != nil {
			t.Fatal(err)
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = fs.ModeDir | 0o700
		} else {
			files++
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
		return nil
	})
	return files
}

// widen gives dir and everything in it the modes of an earlier version.
func widen(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		mode := fs.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return nil
	})
}

// The journal directory is 0700 and its segments, bitmap, state and acked
// files are 0600; a journal left readable by an earlier version is
// tightened when the volume opens, with one log line.
func TestJournalIsPrivate(t *testing.T) {
	dir := t.TempDir()
	img, jdir := filepath.Join(dir, "disk.img"), filepath.Join(dir, "journal", "disk")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	open := func() *tracker.Volume {
		v := tracker.NewVolume(img, jdir)
		v.SegmentAge, v.CheckpointInterval = 0, 0
		v.Logger = slog.New(slog.NewTextHandler(&log, nil))
		if err := v.Open(context.Background()); err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := open()
	if _, err := v.WriteAt(bytes.Repeat([]byte{1}, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if n := privateModes(t, jdir); n < 4 {
		t.Fatalf("only %d files in the journal directory", n)
	}
	if strings.Contains(log.String(), "made private") {
		t.Fatalf("a new journal was tightened:\n%s", log.String())
	}

	widen(t, jdir)
	v = open()
	v.Close()
	privateModes(t, jdir)
	if n := strings.Count(log.String(), "journal made private"); n != 1 {
		t.Fatalf("%d log lines about tightening the journal, want 1:\n%s", n, log.String())
	}
	v = open()
	v.Close()
	if n := strings.Count(log.String(), "journal made private"); n != 1 {
		t.Fatalf("a private journal was tightened again:\n%s", log.String())
	}
}
