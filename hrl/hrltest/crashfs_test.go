package hrltest_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
)

var errInjected = errors.New("injected")

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func open(t *testing.T, c *hrltest.CrashFS, name string, flag int) hrl.File {
	t.Helper()
	f, err := c.OpenFile(name, flag, 0o644)
	must(t, err)
	return f
}

func write(t *testing.T, f hrl.File, s string, off int64) {
	t.Helper()
	if _, err := f.WriteAt([]byte(s), off); err != nil {
		t.Fatal(err)
	}
}

// newFS returns a CrashFS with directory /d and durable file /d/old = "old".
func newFS(t *testing.T) *hrltest.CrashFS {
	t.Helper()
	c := hrltest.New()
	must(t, c.WriteFile("/d/old", []byte("old")))
	return c
}

func TestDurabilityDropUnsynced(t *testing.T) {
	const rw, cr = os.O_RDWR, os.O_RDWR | os.O_CREATE
	tests := []struct {
		name string
		run  func(t *testing.T, c *hrltest.CrashFS)
		want map[string]string // name -> content after the crash; absent if missing
	}{
		{"synced write survives", func(t *testing.T, c *hrltest.CrashFS) {
			f := open(t, c, "/d/old", rw)
			write(t, f, "NEW", 0)
			must(t, f.Sync())
		}, map[string]string{"old": "NEW"}},
		{"unsynced write is lost", func(t *testing.T, c *hrltest.CrashFS) {
			write(t, open(t, c, "/d/old", rw), "NEWER", 1)
		}, map[string]string{"old": "old"}},
		{"synced data without SyncDir disappears", func(t *testing.T, c *hrltest.CrashFS) {
			f := open(t, c, "/d/new", cr)
			write(t, f, "data", 0)
			must(t, f.Sync())
		}, map[string]string{"old": "old"}},
		{"SyncDir without data sync keeps an empty file", func(t *testing.T, c *hrltest.CrashFS) {
			write(t, open(t, c, "/d/new", cr), "data", 0)
			must(t, c.SyncDir("/d"))
		}, map[string]string{"old": "old", "new": ""}},
		{"sync and SyncDir keep a new file", func(t *testing.T, c *hrltest.CrashFS) {
			f := open(t, c, "/d/new", cr)
			write(t, f, "data", 0)
			must(t, f.Sync())
			must(t, c.SyncDir("/d"))
		}, map[string]string{"old": "old", "new": "data"}},
		{"rename without SyncDir is lost", func(t *testing.T, c *hrltest.CrashFS) {
			must(t, c.Rename("/d/old", "/d/new"))
		}, map[string]string{"old": "old"}},
		{"rename with SyncDir survives", func(t *testing.T, c *hrltest.CrashFS) {
			must(t, c.Rename("/d/old", "/d/new"))
			must(t, c.SyncDir("/d"))
		}, map[string]string{"new": "old"}},
		{"atomic replace via rename", func(t *testing.T, c *hrltest.CrashFS) {
			f := open(t, c, "/d/tmp", cr)
			write(t, f, "replaced", 0)
			must(t, f.Sync())
			must(t, c.Rename("/d/tmp", "/d/old"))
			must(t, c.SyncDir("/d"))
		}, map[string]string{"old": "replaced"}},
		{"rename into another dir needs both SyncDirs", func(t *testing.T, c *hrltest.CrashFS) {
			must(t, c.MkdirAll("/e", 0o755))
			must(t, c.Rename("/d/old", "/e/x"))
			must(t, c.SyncDir("/e"))
		}, map[string]string{"old": "old", "../e/x": "old"}}, // both names durable: like a hard link
		{"remove without SyncDir comes back", func(t *testing.T, c *hrltest.CrashFS) {
			must(t, c.Remove("/d/old"))
		}, map[string]string{"old": "old"}},
		{"remove with SyncDir is durable", func(t *testing.T, c *hrltest.CrashFS) {
			must(t, c.Remove("/d/old"))
			must(t, c.SyncDir("/d"))
		}, map[string]string{}},
		{"unsynced truncate and punch revert", func(t *testing.T, c *hrltest.CrashFS) {
			f := open(t, c, "/d/old", rw|os.O_TRUNC)
			must(t, f.Truncate(10))
			must(t, f.PunchHole(0, 2))
		}, map[string]string{"old": "old"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFS(t)
			tt.run(t, c)
			c.Crash(hrltest.DropUnsynced, nil)
			names, err := c.ReadDir("/d")
			must(t, err)
			var want []string
			for n := range tt.want {
				if filepath.Dir(n) == "." {
					want = append(want, n)
				}
			}
			slices.Sort(want)
			if !slices.Equal(names, want) {
				t.Errorf("ReadDir(/d) = %q, want %q", names, want)
			}
			for n, content := range tt.want {
				got, err := c.ReadFile(filepath.Join("/d", n))
				if err != nil || string(got) != content {
					t.Errorf("%s = %q, %v; want %q", n, got, err, content)
				}
			}
		})
	}
}

// workload creates /d/w (op 1), writes one byte at offsets 0..4 (ops 2..6)
// and syncs (op 7). It returns the index of the first failing op, or -1.
func workload(c *hrltest.CrashFS) (int, error) {
	f, err := c.OpenFile("/d/w", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return 1, err
	}
	for i := range 5 {
		if _, err := f.WriteAt([]byte{'a' + byte(i)}, int64(i)); err != nil {
			return 2 + i, err
		}
	}
	if err := f.Sync(); err != nil {
		return 7, err
	}
	return -1, nil
}

func TestCrashAfter(t *testing.T) {
	for n := 0; n <= 8; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			c := newFS(t)
			must(t, c.SyncDir("/d")) // counted; CrashAfter counts from its call
			c.CrashAfter(n)
			failed, err := workload(c)
			wantFail := -1
			if n < 7 {
				wantFail = n + 1
			}
			if failed != wantFail || (wantFail > 0) != errors.Is(err, hrltest.ErrCrashed) {
				t.Fatalf("first failure at op %d (%v), want op %d", failed, err, wantFail)
			}
			if got := c.Ops(); got != 1+min(n, 7) {
				t.Errorf("Ops() = %d, want %d", got, 1+min(n, 7))
			}
			if c.Crashed() != (n <= 7) {
				t.Errorf("Crashed() = %v", c.Crashed())
			}
			got, err := c.ReadFile("/d/w")
			if n == 0 {
				if !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("ReadFile after CrashAfter(0): %v", err)
				}
				return
			}
			if want := "abcde"[:min(n-1, 5)]; string(got) != want {
				t.Errorf("content = %q, want %q", got, want)
			}
			if _, err := c.ReadFile("/d/old"); err != nil {
				t.Errorf("reads must work after the crash point: %v", err)
			}
			ops := c.Ops()
			c.Crash(hrltest.DropUnsynced, nil)
			if c.Ops() != ops {
				t.Errorf("Crash reset the op counter to %d", c.Ops())
			}
			if c.Crashed() {
				t.Error("Crash did not clear the crash point")
			}
			if err := c.WriteFile("/d/after", nil); err != nil {
				t.Error(err)
			}
			if _, err := c.OpenFile("/d/x", os.O_CREATE|os.O_RDWR, 0o644); err != nil {
				t.Errorf("create after Crash: %v", err)
			}
		})
	}
}

func TestFailAt(t *testing.T) {
	tests := []struct {
		op     string
		nth    int
		wantAt int // workload op index that fails, -1 for none
	}{
		{"create", 1, 1},
		{"write", 1, 2},
		{"write", 3, 4},
		{"write", 5, 6},
		{"sync", 1, 7},
		{"write", 6, -1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s#%d", tt.op, tt.nth), func(t *testing.T) {
			c := newFS(t)
			f := open(t, c, "/d/old", os.O_RDWR)
			write(t, f, "x", 0) // before FailAt: not counted
			c.FailAt(tt.op, tt.nth, errInjected)
			at, err := workload(c)
			if at != tt.wantAt || (at > 0) != errors.Is(err, errInjected) {
				t.Fatalf("failure at op %d (%v), want %d", at, err, tt.wantAt)
			}
			if at < 0 || at == 1 || at == 7 {
				return
			}
			// Carry on after the failed write; the fault must not recur.
			g := open(t, c, "/d/w", os.O_RDWR)
			for i := at - 1; i < 5; i++ {
				write(t, g, string(rune('a'+i)), int64(i))
			}
			got, _ := c.ReadFile("/d/w")
			want := []byte("abcde")
			want[at-2] = 0 // the failed write had no effect
			if at-2 == 4 {
				want = want[:4] // nor did it extend the file
			}
			if !bytes.Equal(got, want) {
				t.Errorf("content = %q, want %q", got, want)
			}
		})
	}
}

func TestFailAtEveryOp(t *testing.T) {
	tests := []struct {
		op string
		do func(c *hrltest.CrashFS, f hrl.File) error
	}{
		{"create", func(c *hrltest.CrashFS, _ hrl.File) error {
			_, err := c.OpenFile("/d/n", os.O_CREATE|os.O_RDWR, 0o644)
			return err
		}},
		{"write", func(_ *hrltest.CrashFS, f hrl.File) error { _, err := f.WriteAt([]byte("X"), 0); return err }},
		{"truncate", func(_ *hrltest.CrashFS, f hrl.File) error { return f.Truncate(1) }},
		{"truncate", func(c *hrltest.CrashFS, _ hrl.File) error {
			_, err := c.OpenFile("/d/old", os.O_TRUNC|os.O_RDWR, 0)
			return err
		}},
		{"punch", func(_ *hrltest.CrashFS, f hrl.File) error { return f.PunchHole(0, 1) }},
		{"zero", func(_ *hrltest.CrashFS, f hrl.File) error { return f.ZeroRange(0, 1) }},
		{"sync", func(_ *hrltest.CrashFS, f hrl.File) error { return f.Sync() }},
		{"syncdir", func(c *hrltest.CrashFS, _ hrl.File) error { return c.SyncDir("/d") }},
		{"remove", func(c *hrltest.CrashFS, _ hrl.File) error { return c.Remove("/d/old") }},
		{"rename", func(c *hrltest.CrashFS, _ hrl.File) error { return c.Rename("/d/old", "/d/n") }},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			c := newFS(t)
			f := open(t, c, "/d/old", os.O_RDWR)
			write(t, f, "new", 0) // pending, so a faulted sync is visible
			ops := c.Ops()
			c.FailAt(tt.op, 1, errInjected)
			if err := tt.do(c, f); !errors.Is(err, errInjected) {
				t.Fatalf("got %v, want injected error", err)
			}
			if c.Ops() != ops+1 {
				t.Errorf("Ops() = %d, want %d", c.Ops(), ops+1)
			}
			names, _ := c.ReadDir("/d")
			got, _ := c.ReadFile("/d/old")
			if !slices.Equal(names, []string{"old"}) || string(got) != "new" {
				t.Errorf("faulted %s had an effect: %q %q", tt.op, names, got)
			}
			c.Crash(hrltest.DropUnsynced, nil)
			if got, _ := c.ReadFile("/d/old"); string(got) != "old" {
				t.Errorf("durable content after faulted %s = %q", tt.op, got)
			}
		})
	}
}

func TestFailPath(t *testing.T) {
	c := newFS(t)
	wal := open(t, c, "/d/a.wal", os.O_RDWR|os.O_CREATE)
	dat := open(t, c, "/d/b.dat", os.O_RDWR|os.O_CREATE)
	c.FailPath("sync", ".wal", errInjected)
	for range 3 {
		if err := wal.Sync(); !errors.Is(err, errInjected) {
			t.Fatalf("wal sync: %v", err)
		}
		must(t, dat.Sync())
	}
	c.ClearFaults()
	must(t, wal.Sync())
}

// model applies a reference mutation to b.
type model func(b []byte) []byte

func wr(off int, s string) model {
	return func(b []byte) []byte {
		for len(b) < off+len(s) {
			b = append(b, 0)
		}
		copy(b[off:], s)
		return b
	}
}

func TestCrashModes(t *testing.T) {
	steps := []struct {
		do   func(f hrl.File) error
		m    model
		torn []model // alternative partial outcomes when last kept
	}{
		{func(f hrl.File) error { _, err := f.WriteAt([]byte("hello"), 0); return err }, wr(0, "hello"),
			[]model{wr(0, ""), wr(0, "h"), wr(0, "he"), wr(0, "hel"), wr(0, "hell")}},
		{func(f hrl.File) error { return f.Truncate(3) }, func(b []byte) []byte { return append(b, make([]byte, 3)...)[:3] }, nil},
		{func(f hrl.File) error { _, err := f.WriteAt([]byte("XY"), 6); return err }, wr(6, "XY"), []model{wr(6, "X"), func(b []byte) []byte { return b }}},
		{func(f hrl.File) error { return f.PunchHole(1, 1) }, func(b []byte) []byte {
			if len(b) > 1 {
				b[1] = 0
			}
			return b
		}, nil},
	}
	apply := func(keep func(i int) bool) []byte {
		var b []byte
		for i, s := range steps {
			if keep(i) {
				b = s.m(b)
			}
		}
		return b
	}
	prefixes := map[string]bool{}
	subsets := map[string]bool{}
	for mask := range 1 << len(steps) {
		subsets[string(apply(func(i int) bool { return mask&(1<<i) != 0 }))] = true
	}
	for k := 0; k <= len(steps); k++ {
		base := apply(func(i int) bool { return i < k })
		prefixes[string(base)] = true
		if k > 0 {
			for _, tm := range steps[k-1].torn {
				prefixes[string(tm(apply(func(i int) bool { return i < k-1 })))] = true
			}
		}
	}
	for _, tt := range []struct {
		mode  hrltest.CrashMode
		valid map[string]bool
	}{
		{hrltest.KeepPrefix, prefixes},
		{hrltest.KeepRandom, subsets},
		{hrltest.DropUnsynced, map[string]bool{"": true}},
	} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			seen := map[string]bool{}
			for seed := range uint64(300) {
				c := hrltest.New()
				must(t, c.WriteFile("/f", nil))
				f := open(t, c, "/f", os.O_RDWR)
				for _, s := range steps {
					must(t, s.do(f))
				}
				c.Crash(tt.mode, rand.New(rand.NewPCG(seed, 7)))
				got, _ := c.ReadFile("/f")
				if !tt.valid[string(got)] {
					t.Fatalf("seed %d: %q is not a valid %v outcome", seed, got, tt.mode)
				}
				seen[string(got)] = true
				// The recovered state is durable.
				c.Crash(hrltest.DropUnsynced, nil)
				if again, _ := c.ReadFile("/f"); !bytes.Equal(again, got) {
					t.Fatalf("seed %d: second crash changed %q to %q", seed, got, again)
				}
			}
			if len(tt.valid) > 1 && len(seen) < len(tt.valid)/2 {
				t.Errorf("only %d of %d outcomes seen: %q", len(seen), len(tt.valid), slices.Collect(maps.Keys(seen)))
			}
		})
	}
}
