package hrl_test

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
)

// MakePrivate takes group and other permissions away from directories and
// regular files, keeps narrower modes, leaves links and sockets alone, and
// reports what it changed once.
func TestMakePrivate(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "journal")
	outside := filepath.Join(root, "outside")
	os.WriteFile(outside, nil, 0o644)
	os.MkdirAll(filepath.Join(dir, "quarantine", "x"), 0o755)
	files := map[string]os.FileMode{
		"0000000000000001.hrl":     0o644,
		"bitmap":                   0o666,
		"volume.json":              0o600,
		"acked":                    0o400,
		"quarantine/x/old.hrl":     0o644,
		"quarantine/x/private.hrl": 0o640,
	}
	for name, mode := range files {
		p := filepath.Join(dir, name)
		os.WriteFile(p, nil, mode)
		os.Chmod(p, mode) // past the umask
	}
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Join(dir, "quarantine"), 0o775)
	os.Symlink(outside, filepath.Join(dir, "link"))
	ln, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(filepath.Join(dir, "sock"), 0o666)

	changed, err := hrl.MakePrivate(hrl.OSFS{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	rel := func(p string) string { r, _ := filepath.Rel(dir, p); return r }
	var got []string
	for _, p := range changed {
		got = append(got, rel(p))
	}
	slices.Sort(got)
	want := []string{".", "0000000000000001.hrl", "bitmap", "quarantine", "quarantine/x", "quarantine/x/old.hrl", "quarantine/x/private.hrl"}
	if !slices.Equal(got, want) {
		t.Fatalf("changed %q, want %q", got, want)
	}
	for name, mode := range map[string]os.FileMode{
		".": 0o700, "quarantine": 0o700, "quarantine/x": 0o700,
		"0000000000000001.hrl": 0o600, "bitmap": 0o600, "volume.json": 0o600, "acked": 0o400,
		"quarantine/x/old.hrl": 0o600, "quarantine/x/private.hrl": 0o600, "sock": 0o666,
	} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v (%v), want %v", name, fi.Mode(), err, mode)
		}
	}
	if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o644 {
		t.Errorf("the link's target was changed to %v", fi.Mode())
	}
	if again, err := hrl.MakePrivate(hrl.OSFS{}, dir); err != nil || len(again) != 0 {
		t.Fatalf("second pass changed %q (%v)", again, err)
	}
	// An FS without permission bits has nothing to do.
	if got, err := hrl.MakePrivate(hrltest.New(), "/j"); got != nil || err != nil {
		t.Fatalf("in-memory FS: %q, %v", got, err)
	}
}

// Segments are created private.
func TestSegmentIsPrivate(t *testing.T) {
	dir := t.TempDir()
	w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{FirstSeq: 1, Generation: 1}, hrl.WriterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fi, err := os.Stat(w.Path())
	if err != nil || fi.Mode() != hrl.PrivateFile {
		t.Fatalf("segment mode %v (%v), want %v", fi.Mode(), err, fs.FileMode(hrl.PrivateFile))
	}
}
