package tracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"lifeboat/tracker"
)

// Tag refused during a resync read the reason after unlocking the volume
// (-race saw it racing with the resync's end): tags taken in a loop while a
// resync runs, under -race.
func TestTagDuringResync(t *testing.T) {
	for range 20 {
		dir := t.TempDir()
		path := filepath.Join(dir, "d.img")
		f, _ := os.Create(path)
		f.Truncate(4 << 20)
		f.Close()
		v := tracker.NewVolume(path, filepath.Join(dir, "j"))
		v.InitialSync = true
		if err := v.Open(context.Background()); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- v.Resync(context.Background(), nil) }()
		for {
			_, err := v.Tag(1, "x")
			if err == nil {
				break
			}
			if !errors.Is(err, tracker.ErrResync) {
				t.Fatal(err)
			}
		}
		<-done
		v.Close()
	}
}

// CleanStart: a volume opened for the first time has no dirty region;
// written, it has; reopened (not the first time), its bitmap is kept.
func TestCleanStart(t *testing.T) {
	open := fileVolume(t, func(v *tracker.Volume) { v.CleanStart = true })
	v := open()
	if d := v.Bitmap().Dirty(); d != 0 {
		t.Fatalf("a new CleanStart volume has %d dirty regions, want 0", d)
	}
	if _, err := v.WriteAt(make([]byte, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	if d := v.Bitmap().Dirty(); d != 1 {
		t.Fatalf("after one write %d dirty regions, want 1", d)
	}
	v.Close()
	v = open()
	defer v.Close()
	if d := v.Bitmap().Dirty(); d != 1 {
		t.Fatalf("reopened: %d dirty regions, want the 1 written", d)
	}
}

// SetReadOnly: writes, zeroes and trims get EPERM for the reason given,
// also after the volume is closed and opened again; "" lifts it, durably
// too.
func TestReadOnlyHoldsAcrossRestarts(t *testing.T) {
	open := fileVolume(t, nil)
	refused := func(v *tracker.Volume) bool {
		_, werr := v.WriteAt(make([]byte, 4096), 0)
		zerr, terr := v.WriteZeroes(0, 4096), v.Trim(0, 4096)
		for _, err := range []error{werr, zerr, terr} {
			if err != nil && (!errors.Is(err, syscall.EPERM) || !errors.Is(err, tracker.ErrReadOnly)) {
				t.Fatalf("refused with %v, want ErrReadOnly wrapping EPERM", err)
			}
		}
		return werr != nil && zerr != nil && terr != nil
	}
	v := open()
	if err := v.SetReadOnly("failed over"); err != nil {
		t.Fatal(err)
	}
	if !refused(v) || v.ReadOnly() != "failed over" {
		t.Fatalf("read-only volume took a write (reason %q)", v.ReadOnly())
	}
	v.Close()
	v = open()
	if !refused(v) || v.ReadOnly() != "failed over" {
		t.Fatalf("reopened: took a write (reason %q); read-only must hold across restarts", v.ReadOnly())
	}
	if err := v.SetReadOnly(""); err != nil {
		t.Fatal(err)
	}
	if refused(v) {
		t.Fatal("writes refused after SetReadOnly(\"\")")
	}
	v.Close()
	v = open()
	defer v.Close()
	if refused(v) || v.ReadOnly() != "" {
		t.Fatal("writable volume reopened read-only")
	}
}

// fileVolume makes a 4 MiB sparse file and returns a function that opens a
// tracker.Volume over it (the same journal each time), with set applied
// before Open.
func fileVolume(t *testing.T, set func(*tracker.Volume)) func() *tracker.Volume {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "d.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(4 << 20)
	f.Close()
	return func() *tracker.Volume {
		v := tracker.NewVolume(path, filepath.Join(dir, "j"))
		if set != nil {
			set(v)
		}
		if err := v.Open(context.Background()); err != nil {
			t.Fatal(err)
		}
		return v
	}
}
