package pki

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLeaseIDs(t *testing.T) {
	dir := t.TempDir()
	cur1, prev1, err := LeaseIDs(dir)
	if err != nil || prev1 != "" || len(cur1) != 36 {
		t.Fatalf("first run: %q, %q, %v", cur1, prev1, err)
	}
	cur2, prev2, err := LeaseIDs(dir)
	if err != nil || prev2 != cur1 || cur2 == cur1 || len(cur2) != 36 {
		t.Fatalf("second run: %q, %q, %v; want a new id and the first run's as previous", cur2, prev2, err)
	}
	if other, prev, err := LeaseIDs(t.TempDir()); err != nil || other == cur2 || prev != "" {
		t.Fatalf("another data dir: %q, %q, %v", other, prev, err)
	}
	if err := os.WriteFile(filepath.Join(dir, LeaseIDFile), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LeaseIDs(dir); err == nil || !strings.Contains(err.Error(), "not a UUID") {
		t.Fatalf("damaged id file: %v", err)
	}
}
