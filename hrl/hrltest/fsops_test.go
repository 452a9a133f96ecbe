package hrltest_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
)

// Tests of the file-system semantics and the test helpers.

func TestCrashInvalidatesHandles(t *testing.T) {
	c := newFS(t)
	f := open(t, c, "/d/old", os.O_RDWR)
	c.Crash(hrltest.DropUnsynced, nil)
	_, rerr := f.ReadAt(make([]byte, 1), 0)
	_, werr := f.WriteAt([]byte("x"), 0)
	_, serr := f.Size()
	for i, err := range []error{rerr, werr, serr, f.Sync(), f.Truncate(0), f.PunchHole(0, 1), f.ZeroRange(0, 1), f.Close()} {
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("op %d after Crash: %v, want os.ErrClosed", i, err)
		}
	}
	g := open(t, c, "/d/old", os.O_RDONLY)
	must(t, g.Close())
	if err := g.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

func TestTruncatePunchZero(t *testing.T) {
	tests := []struct {
		name string
		do   func(f hrl.File) error
		want string
	}{
		{"truncate shrinks", func(f hrl.File) error { return f.Truncate(2) }, "ab"},
		{"truncate extends with zeros", func(f hrl.File) error { return f.Truncate(6) }, "abcd\x00\x00"},
		{"shrink then grow reads zeros", func(f hrl.File) error {
			return errors.Join(f.Truncate(1), f.Truncate(3))
		}, "a\x00\x00"},
		{"write past EOF extends with zeros", func(f hrl.File) error { _, err := f.WriteAt([]byte("z"), 6); return err }, "abcd\x00\x00z"},
		{"punch inside", func(f hrl.File) error { return f.PunchHole(1, 2) }, "a\x00\x00d"},
		{"punch clamps to size", func(f hrl.File) error { return f.PunchHole(2, 100) }, "ab\x00\x00"},
		{"punch past EOF", func(f hrl.File) error { return f.PunchHole(10, 5) }, "abcd"},
		{"zero clamps to size", func(f hrl.File) error { return f.ZeroRange(3, 9) }, "abc\x00"},
		{"zero n=0 is a no-op", func(f hrl.File) error { return f.ZeroRange(0, 0) }, "abcd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := hrltest.New()
			must(t, c.WriteFile("/f", []byte("abcd")))
			f := open(t, c, "/f", os.O_RDWR)
			must(t, tt.do(f))
			size, err := f.Size()
			must(t, err)
			got, _ := c.ReadFile("/f")
			if string(got) != tt.want || size != int64(len(tt.want)) {
				t.Errorf("got %q size %d, want %q", got, size, tt.want)
			}
		})
	}
}

// TestReadAtMatchesOS compares ReadAt with a real os.File through hrl.OSFS.
func TestReadAtMatchesOS(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f")
	must(t, os.WriteFile(name, []byte("hello"), 0o644))
	rf, err := hrl.OSFS{}.OpenFile(name, os.O_RDONLY, 0)
	must(t, err)
	defer rf.Close()
	c := hrltest.New()
	must(t, c.WriteFile("/f", []byte("hello")))
	mf := open(t, c, "/f", os.O_RDONLY)
	for _, tc := range []struct{ off, n int64 }{{0, 5}, {0, 10}, {3, 5}, {5, 1}, {9, 1}, {0, 0}, {7, 0}, {4, 1}} {
		rb, mb := make([]byte, tc.n), make([]byte, tc.n)
		rn, rerr := rf.ReadAt(rb, tc.off)
		mn, merr := mf.ReadAt(mb, tc.off)
		if rn != mn || rerr != merr || !bytes.Equal(rb, mb) {
			t.Errorf("ReadAt(%d bytes, %d): os %d %v %q; crashfs %d %v %q", tc.n, tc.off, rn, rerr, rb, mn, merr, mb)
		}
	}
}

func TestOpenFileAndNamespace(t *testing.T) {
	c := newFS(t)
	_, err := c.OpenFile("/d/missing", os.O_RDWR, 0)
	check := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	check("open missing", err, fs.ErrNotExist)
	_, err = c.OpenFile("/d/old", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0)
	check("O_EXCL on existing", err, fs.ErrExist)
	_, err = c.OpenFile("/nodir/x", os.O_RDWR|os.O_CREATE, 0)
	check("create in missing dir", err, fs.ErrNotExist)
	_, err = open(t, c, "/d/old", os.O_RDONLY).WriteAt([]byte("x"), 0)
	check("write on O_RDONLY", err, syscall.EBADF)
	_, err = open(t, c, "/d/old", os.O_WRONLY).ReadAt(make([]byte, 1), 0)
	check("read on O_WRONLY", err, syscall.EBADF)
	check("remove missing", c.Remove("/d/missing"), fs.ErrNotExist)
	check("rename missing", c.Rename("/d/missing", "/d/x"), fs.ErrNotExist)
	_, err = c.ReadDir("/nodir")
	check("ReadDir missing", err, fs.ErrNotExist)
	check("SyncDir missing", c.SyncDir("/nodir"), fs.ErrNotExist)

	f := open(t, c, "/d/old", os.O_RDWR|os.O_TRUNC)
	if got, _ := c.ReadFile("/d/old"); len(got) != 0 || f.Name() != "/d/old" {
		t.Errorf("O_TRUNC left %q, Name %q", got, f.Name())
	}
	must(t, c.MkdirAll("/d/sub/deeper", 0o755))
	open(t, c, "/d/b", os.O_RDWR|os.O_CREATE)
	names, err := c.ReadDir("/d/")
	must(t, err)
	if want := []string{"b", "old", "sub"}; !slices.Equal(names, want) {
		t.Errorf("ReadDir = %q, want %q", names, want)
	}
	must(t, c.Rename("/d/b", "/d/old")) // replaces the target
	names, _ = c.ReadDir("/d")
	if want := []string{"old", "sub"}; !slices.Equal(names, want) {
		t.Errorf("after rename ReadDir = %q, want %q", names, want)
	}
	if err := c.Remove("/d/sub"); err == nil {
		t.Error("removed a non-empty directory")
	}
	must(t, c.Remove("/d/sub/deeper"))
	// Relative paths work as keys after filepath.Clean.
	must(t, c.WriteFile("rel/x", []byte("r")))
	if got, err := c.ReadFile("./rel/../rel/x"); string(got) != "r" {
		t.Errorf("relative ReadFile = %q, %v", got, err)
	}
}

func TestFlipByte(t *testing.T) {
	c := newFS(t)
	must(t, c.FlipByte("/d/old", 1))
	want := string([]byte{'o', 'l' ^ 1, 'd'})
	if got, _ := c.ReadFile("/d/old"); string(got) != want {
		t.Errorf("after flip %q", got)
	}
	c.Crash(hrltest.DropUnsynced, nil)
	if got, _ := c.ReadFile("/d/old"); string(got) != want {
		t.Errorf("flip not durable: %q", got)
	}
	if err := c.FlipByte("/d/old", 3); err == nil {
		t.Error("FlipByte past EOF succeeded")
	}
}

func TestConcurrent(t *testing.T) {
	c := hrltest.New()
	must(t, c.MkdirAll("/d", 0o755))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			f, err := c.OpenFile(fmt.Sprintf("/d/%d", g), os.O_RDWR|os.O_CREATE, 0o644)
			if err != nil {
				t.Error(err)
				return
			}
			for i := range 50 {
				f.WriteAt([]byte{byte(i)}, int64(i))
				f.ReadAt(make([]byte, 1), int64(i))
				if i%10 == 0 {
					f.Sync()
					c.SyncDir("/d")
					c.ReadDir("/d")
				}
			}
		})
	}
	wg.Wait()
	if got := c.Ops(); got != 8*(1+50+5+5) {
		t.Errorf("Ops() = %d", got)
	}
}
