package tracker_test

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/tracker"
)

// The hot set (DRBD's activity log): acknowledged regions stay dirty while
// no more than HotSetBytes of regions are; beyond it a checkpoint clears
// the least recently acknowledged ones, down to the hot set. A write to a
// region still in the hot set costs no bitmap sync; Close clears them all.
func TestHotSet(t *testing.T) {
	const hot = 4
	fsys, v, _ := memVolumeWith(t, 1<<20, func(v *tracker.Volume) { v.HotSetBytes = hot * tracker.DefaultRegionSize })
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	write, dirty, checkpoint := hotHelpers(t, v)
	for r := range int64(8) {
		write(r)
	}
	checkpoint("[4 5 6 7]") // the four most recently acknowledged
	noSync := errors.New("the dirty bitmap was synced")
	fsys.FailPath("sync", "dirty.bitmap", noSync)
	write(5) // still hot: no sync
	fsys.ClearFaults()
	write(9)
	checkpoint("[5 6 7 9]") // 4 was the least recently acknowledged
	write(10)
	checkpoint("[5 7 9 10]") // then 6; 5 was acknowledged again after it
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if got := dirty(); got != "[]" {
		t.Fatalf("Close left acknowledged regions dirty: %s", got)
	}
}

// hotHelpers returns: write(r), which writes to region r and acknowledges
// every segment; dirty(), the dirty regions; and checkpoint(want), which
// flushes and checks that the dirty regions are want.
func hotHelpers(t *testing.T, v *tracker.Volume) (func(int64), func() string, func(string)) {
	ackAll := func() {
		t.Helper()
		if err := v.Seal(); err != nil {
			t.Fatal(err)
		}
		for _, s := range v.Segments() {
			if err := v.Ack(s.FirstSeq); err != nil {
				t.Fatal(err)
			}
		}
	}
	write := func(r int64) {
		t.Helper()
		if r >= 0 {
			if _, err := v.WriteAt(fill(4096, byte(r+1)), r*tracker.DefaultRegionSize); err != nil {
				t.Fatal(err)
			}
		}
		ackAll()
	}
	dirty := func() string {
		var out []int64
		for r := range v.Bitmap().Regions() {
			if v.Bitmap().IsDirty(r) {
				out = append(out, r)
			}
		}
		return fmt.Sprint(out)
	}
	checkpoint := func(want string) {
		t.Helper()
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := dirty(); got != want {
			t.Fatalf("dirty regions after a checkpoint: %s, want %s", got, want)
		}
	}
	return write, dirty, checkpoint
}

// The regions an initial replication copied are no working set: once
// acknowledged they are cleared at the next checkpoint, whatever the hot
// set, except one written again and acknowledged before that checkpoint,
// which is hot.
func TestCopiedRegionsAreNotKeptHot(t *testing.T) {
	_, v, _ := memVolumeWith(t, 1<<20, func(v *tracker.Volume) { v.InitialSync, v.HotSetBytes = true, 1<<30 })
	write, _, checkpoint := hotHelpers(t, v)
	if err := v.Resync(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	write(-1) // acknowledge the copy
	write(3)
	checkpoint("[3]")
}

// A negative hot set or clear delay is refused at Open.
func TestHotSetIsValidated(t *testing.T) {
	v := newVolume(t, nil)
	v.HotSetBytes = -1
	if err := v.Open(t.Context()); err == nil {
		v.Close()
		t.Fatal("a negative hot set was accepted")
	}
}

// syncHookFS runs a hook (once) inside the backing store's Sync.
type syncHookFS struct {
	*hrltest.CrashFS
	hook atomic.Pointer[func()]
}

func (h *syncHookFS) OpenFile(name string, flag int, perm os.FileMode) (hrl.File, error) {
	f, err := h.CrashFS.OpenFile(name, flag, perm)
	if err != nil || name != backingPath {
		return f, err
	}
	return &syncHookFile{File: f, fs: h}, nil
}

type syncHookFile struct {
	hrl.File
	fs *syncHookFS
}

func (f *syncHookFile) Sync() error {
	err := f.File.Sync()
	if hook := f.fs.hook.Swap(nil); hook != nil {
		(*hook)()
	}
	return err
}

// A region written and acknowledged while a checkpoint runs, after its
// sync of the backing store, keeps its bit: the checkpoint had picked it
// for its earlier acknowledgement, but the new bytes are not durable in
// the backing store yet, and a power loss would leave the replica with
// bytes the source lost and no dirty bit to say so.
func TestCheckpointKeepsARegionAcknowledgedDuringIt(t *testing.T) {
	fsys := &syncHookFS{CrashFS: hrltest.New()}
	fsys.MkdirAll("/vol", 0o755)
	fsys.WriteFile(backingPath, initialImage(1<<20, 5))
	v := newVolume(t, fsys)
	openVolume(t, v)
	defer v.Close()
	if err := tracker.ClearBitmapForTest(v); err != nil {
		t.Fatal(err)
	}
	write, _, checkpoint := hotHelpers(t, v)
	write(2)
	hook := func() { write(2) } // during the checkpoint's backing sync
	fsys.hook.Store(&hook)
	checkpoint("[2]")
	if fsys.hook.Load() != nil {
		t.Fatal("the checkpoint did not sync the backing store")
	}
	checkpoint("[]") // the next one clears it: its sync covers the write
}
