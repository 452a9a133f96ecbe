package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/targets"
)

func TestPSRetentionsFallbackAndReload(t *testing.T) {
	dir := t.TempDir()
	// Not registered: no retention of its own, --retention applies.
	if r, ok := loadPSRetentions(dir).For("m1", "disk"); ok {
		t.Fatalf("unregistered process server: got %v, want none (--retention)", r)
	}
	if err := os.WriteFile(filepath.Join(dir, psRegistrationFile), []byte(`{"name":"ps2"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered, no answer ever: the longest window, never --retention.
	r := loadPSRetentions(dir)
	if got, ok := r.For("m1", "disk"); !ok || got.Window != targets.MaxRetentionWindow {
		t.Fatalf("before any answer: got %v %v, want %v", got, ok, targets.MaxRetentionWindow)
	}
	if err := r.update(map[string]control.Seconds{"m1/disk": 360 * 3600}); err != nil {
		t.Fatal(err)
	}
	if got, ok := r.For("m1", "disk"); !ok || got.Window != 360*time.Hour {
		t.Fatalf("after the answer: got %v %v, want 360h", got, ok)
	}
	if got, ok := r.For("m1", "other"); !ok || got.Window != targets.MaxRetentionWindow {
		t.Fatalf("item missing from the answer: got %v %v, want %v", got, ok, targets.MaxRetentionWindow)
	}
	// A restart starts from the saved answer, before any heartbeat.
	r2 := loadPSRetentions(dir)
	if got, ok := r2.For("m1", "disk"); !ok || got.Window != 360*time.Hour {
		t.Fatalf("after a restart: got %v %v, want the saved 360h", got, ok)
	}
	if got, _ := r2.For("m2", "disk"); got.Window != targets.MaxRetentionWindow {
		t.Fatalf("after a restart, unknown item: got %v, want %v", got, targets.MaxRetentionWindow)
	}
	// A new answer replaces the file; an unchanged one does not rewrite it.
	if err := r2.update(map[string]control.Seconds{"m1/disk": 48 * 3600}); err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(r2.path())
	if err := r2.update(map[string]control.Seconds{"m1/disk": 48 * 3600}); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(r2.path()); !os.SameFile(st1, st2) {
		t.Error("an unchanged answer rewrote the file")
	}
	if got, _ := loadPSRetentions(dir).For("m1", "disk"); got.Window != 48*time.Hour {
		t.Fatalf("after the second answer and a restart: got %v, want 48h", got)
	}
	// A damaged file: keep more, not --retention.
	if err := os.WriteFile(r2.path(), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, ok := loadPSRetentions(dir).For("m1", "disk"); !ok || got.Window != targets.MaxRetentionWindow {
		t.Fatalf("damaged file: got %v %v, want %v", got, ok, targets.MaxRetentionWindow)
	}
}
