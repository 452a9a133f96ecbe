package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/internal/testenv"
)

// testManaged is a managed agent without a configuration server: the test
// hands it configurations as heartbeat answers would.
func testManaged(t *testing.T, journalDir string) *managedAgent {
	t.Helper()
	o := agentOptions{JournalDir: journalDir, DrainTime: time.Second, SegmentAge: time.Second}
	a := newManagedAgent(o, slog.New(slog.NewTextHandler(io.Discard, nil)), "https://control.invalid", nil, io.Discard)
	if err := a.load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.stop() })
	return a
}

// pausedConfig protects the volumes without shipping them.
func pausedConfig(vols ...control.VolumeConfig) control.AgentConfig {
	for i := range vols {
		vols[i].Paused = true
	}
	return control.AgentConfig{Volumes: vols}
}

// synced runs the volume's pending resync, as the shipper would, and
// checks that nothing is left to resync.
func synced(t *testing.T, a *managedAgent, name string) {
	t.Helper()
	mv := a.vols[name]
	if mv == nil {
		t.Fatalf("%s not protected (errors %v)", name, a.errs)
	}
	if err := mv.vol.Resync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if st := mv.vol.Status(); st.Resync != "" {
		t.Fatalf("%s after a resync: resync %q", name, st.Resync)
	}
}

func wantResync(t *testing.T, a *managedAgent, name, why string, full bool) {
	t.Helper()
	mv := a.vols[name]
	if mv == nil {
		t.Fatalf("%s not protected (errors %v)", name, a.errs)
	}
	st := mv.vol.Status()
	if full {
		if !strings.Contains(st.Resync, reprotectReason) || st.DirtyRegions != st.Regions {
			t.Fatalf("%s: resync %q, %d of %d regions dirty; want a full resync: %q", why, st.Resync, st.DirtyRegions, st.Regions, reprotectReason)
		}
	} else if st.Resync != "" {
		t.Fatalf("%s: resync %q, want none", why, st.Resync)
	}
}

func TestManagedReprotectResyncsInFull(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	jdir := filepath.Join(dir, "journal")
	disk := control.VolumeConfig{Name: "disk", Path: filepath.Join(dir, "disk.img"), Size: 4 << 20}

	a := testManaged(t, jdir)
	a.reconcile(ctx, pausedConfig(disk))
	if st := a.vols["disk"].vol.Status(); st.Resync == "" || strings.Contains(st.Resync, reprotectReason) {
		t.Fatalf("new volume: resync %q, want the initial sync's", st.Resync)
	}
	synced(t, a, "disk")
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}

	// A restart reconciles the saved configuration: not a protect again.
	a = testManaged(t, jdir)
	a.reconcile(ctx, a.saved.Config)
	wantResync(t, a, "disk", "restart", false)

	// Unprotect, write to the device behind the agent's back, protect again.
	a.reconcile(ctx, pausedConfig())
	if a.vols["disk"] != nil {
		t.Fatal("disk still protected after the unprotect")
	}
	f, err := os.OpenFile(disk.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("written while not protected"), 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	a.reconcile(ctx, pausedConfig(disk))
	wantResync(t, a, "disk", "protected again", true)
	synced(t, a, "disk")

	// Unprotected while the agent was stopped: the saved configuration
	// lacks it, so the next protect resyncs too.
	a.reconcile(ctx, pausedConfig())
	a.stop()
	a = testManaged(t, jdir)
	a.reconcile(ctx, a.saved.Config)
	a.reconcile(ctx, pausedConfig(disk))
	wantResync(t, a, "disk", "protected again after a restart", true)
	synced(t, a, "disk")

	// A journal left by an older agent (no record of the unprotect): its
	// state alone, for a volume not in the previous configuration, is enough.
	a.reconcile(ctx, pausedConfig())
	a.stop()
	a = testManaged(t, jdir)
	delete(a.saved.Unprotected, "disk")
	a.reconcile(ctx, a.saved.Config)
	a.reconcile(ctx, pausedConfig(disk))
	wantResync(t, a, "disk", "journal from an earlier protection, no record", true)
	synced(t, a, "disk")

	// The same name on another device.
	other := disk
	other.Path = filepath.Join(dir, "other.img")
	a.reconcile(ctx, pausedConfig(other))
	wantResync(t, a, "disk", "path changed", true)
	synced(t, a, "disk")

	// Nothing changed: nothing to resync, and the record is gone.
	a.reconcile(ctx, pausedConfig(other))
	wantResync(t, a, "disk", "same configuration", false)
	if len(a.saved.Unprotected) != 0 {
		t.Fatalf("unprotected left: %v", a.saved.Unprotected)
	}
}

// A managed agent starts with no volumes on its FUSE mount: they come with
// the configuration.
func TestManagedFuseMountStartsEmpty(t *testing.T) {
	testenv.FUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	a := testManaged(t, filepath.Join(dir, "journal"))
	a.o.FuseMount = filepath.Join(dir, "fuse")
	if err := a.startFrontEnds(ctx); err != nil {
		t.Fatal(err)
	}
	disk := control.VolumeConfig{Name: "disk", Path: filepath.Join(dir, "disk.img"), Size: 1 << 20}
	a.reconcile(ctx, pausedConfig(disk))
	if st, err := os.Stat(filepath.Join(a.o.FuseMount, "disk")); err != nil || st.Size() != disk.Size {
		t.Fatalf("FUSE file after protect: %v %v", st, err)
	}
}

// Unprotecting a volume the machine still uses (its FUSE file open, as a
// loop device holds it) keeps it open and served, reports why, and closes
// it only once it is released; protected again meanwhile, it just resumes.
func TestManagedUnprotectInUse(t *testing.T) {
	testenv.FUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	a := testManaged(t, filepath.Join(dir, "journal"))
	fdir := filepath.Join(dir, "fuse")
	a.o.FuseMount, a.o.NBD = fdir, []string{"127.0.0.1:0"}
	if err := a.startFrontEnds(ctx); err != nil {
		t.Fatal(err)
	}
	disk := control.VolumeConfig{Name: "disk", Path: filepath.Join(dir, "disk.img"), Size: 4 << 20}
	a.reconcile(ctx, pausedConfig(disk))
	f, err := os.OpenFile(filepath.Join(fdir, "disk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	report := func() string {
		for _, r := range a.reports() {
			if r.Name == "disk" {
				return r.Error
			}
		}
		return "(no report)"
	}
	pending := func(when string) {
		t.Helper()
		mv := a.vols["disk"]
		if mv == nil {
			t.Fatalf("%s: the volume was closed while its FUSE file is open", when)
		}
		if e := report(); !strings.HasPrefix(e, "unprotect pending: in use (") || !strings.Contains(e, "detach the loop device") {
			t.Fatalf("%s: heartbeat error %q, want the pending unprotect", when, e)
		}
		if mv.stopRun != nil {
			t.Fatalf("%s: still shipping", when)
		}
		// The machine's I/O still works: no EIO.
		data := []byte(when)
		if _, err := f.WriteAt(data, 8192); err != nil {
			t.Fatalf("%s: write through the FUSE file: %v", when, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("%s: fsync of the FUSE file: %v", when, err)
		}
		got := make([]byte, len(data))
		if _, err := f.ReadAt(got, 8192); err != nil || string(got) != when {
			t.Fatalf("%s: read back %q, %v", when, got, err)
		}
	}

	a.reconcile(ctx, pausedConfig())
	pending("unprotected in use")
	a.reconcile(ctx, pausedConfig())
	pending("tried again, still in use")

	// Protected again before it was released: it resumes, served on both
	// front ends, and is not resynced (every write was journaled).
	a.reconcile(ctx, pausedConfig(disk))
	if e := report(); e != "" {
		t.Fatalf("protected again: heartbeat error %q", e)
	}
	if names := a.nbd.ExportNames(); len(names) != 1 || names[0] != "disk" {
		t.Fatalf("protected again: NBD exports %q", names)
	}
	if st := a.vols["disk"].vol.Status(); strings.Contains(st.Resync, reprotectReason) {
		t.Fatalf("resumed volume resynced: %q", st.Resync)
	}

	a.reconcile(ctx, pausedConfig())
	pending("unprotected again, in use")
	f.Close()
	deadline := time.Now().Add(30 * time.Second)
	for a.vols["disk"] != nil { // the kernel releases the handle asynchronously
		if time.Now().After(deadline) {
			t.Fatalf("not removed after the file was closed: %s", report())
		}
		time.Sleep(20 * time.Millisecond)
		a.reconcile(ctx, pausedConfig())
	}
	if !a.saved.Unprotected["disk"] || len(a.reports()) != 0 {
		t.Fatalf("after release: unprotected %v, reports %+v", a.saved.Unprotected, a.reports())
	}
	if names := a.mount.FileNames(); len(names) != 0 {
		t.Fatalf("FUSE files after the unprotect: %q", names)
	}
	// What the machine wrote while the unprotect was pending reached the
	// device.
	b, err := os.ReadFile(disk.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "unprotected again, in use"; string(b[8192:8192+len(want)]) != want {
		t.Fatalf("device at 8192: %q, want %q", b[8192:8192+len(want)], want)
	}
}
