package pki

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestServerID(t *testing.T) {
	dir := t.TempDir()
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := ServerID(dir)
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || len(id) != 36 {
			t.Fatalf("concurrent first uses got ids %q", ids)
		}
	}
	if again, err := ServerID(dir); err != nil || again != ids[0] {
		t.Fatalf("second use: %q, %v; want %q", again, err, ids[0])
	}
	if other, err := ServerID(t.TempDir()); err != nil || other == ids[0] {
		t.Fatalf("another data dir: %q, %v", other, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ServerIDFile), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ServerID(dir); err == nil || !strings.Contains(err.Error(), "not a UUID") {
		t.Fatalf("damaged id file: %v", err)
	}
}
