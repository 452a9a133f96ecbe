package azure_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// ZERO extents over pages the blob never had (the holes of an initial
// replication) send no Clear Pages; over written pages they do, and those
// pages read as zeros.
func TestClearsOnlyWrittenPages(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	p := newFaultProxy(t, s)
	var mu sync.Mutex
	var clears []string // x-ms-range of each Clear Pages
	p.fault = func(_ int64, r *http.Request) (int, string) {
		if r.Header.Get("x-ms-page-write") == "clear" {
			mu.Lock()
			clears = append(clears, r.Header.Get("x-ms-range"))
			mu.Unlock()
		}
		return 0, ""
	}
	tg := p.target(t, s, cont, azure.Options{})
	defer tg.Close()
	info := targets.VolumeInfo{ID: "4e1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "holes", Size: 16 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	m := newModel(info.Size, 9)
	var exts []targets.Extent
	for off := int64(0); off < info.Size; off += 1 << 20 {
		if off%(2<<20) == 0 {
			exts = append(exts, targets.Extent{Off: off, Data: m.random(1 << 20)})
		} else {
			exts = append(exts, targets.Extent{Off: off, Len: 1 << 20}) // a hole, as the agent sends it
		}
	}
	m.apply(t, rep, exts)
	if len(clears) != 0 {
		t.Fatalf("Clear Pages sent for holes of a new blob: %q", clears)
	}
	// Zero data that is there: cleared, and reads as zeros.
	m.apply(t, rep, []targets.Extent{{Off: 0, Len: 64 << 10}, {Off: 1<<20 - 4096, Len: 8192}})
	slices.Sort(clears)
	if want := []string{"bytes=0-65535", "bytes=1044480-1048575"}; !slices.Equal(clears, want) {
		t.Fatalf("Clear Pages %q to zero 64 KiB of data, and 4 KiB of data with 4 KiB of hole beside it; want %q", clears, want)
	}
	m.checkPoint(t, rep, 1)
}

// When Get Page Ranges fails, clears are sent as if every page were
// written: dearer, still correct, and replication does not stall.
func TestClearsWhenPageRangesFail(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	p := newFaultProxy(t, s)
	var mu sync.Mutex
	var clears int
	p.fault = func(_ int64, r *http.Request) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Query().Get("comp") == "pagelist" {
			return http.StatusInternalServerError, "InternalError"
		}
		if r.Header.Get("x-ms-page-write") == "clear" {
			clears++
		}
		return 0, ""
	}
	for _, opts := range []azure.Options{{RetryDelay: time.Millisecond}, {RetryDelay: time.Millisecond, Cipher: testCipher(t)}} {
		tg := p.target(t, s, cont, opts)
		info := targets.VolumeInfo{ID: "3e1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "nopagelist", Size: 4 << 20, BlockSize: 4096}
		if opts.Cipher != nil {
			info.ID = "3f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
		}
		rep, err := tg.Open(ctx, info)
		if err != nil {
			t.Fatal(err)
		}
		m := newModel(info.Size, 4)
		m.apply(t, rep, []targets.Extent{{Off: 0, Data: m.random(1 << 20)}, {Off: 1 << 20, Len: 1 << 20}})
		m.apply(t, rep, []targets.Extent{{Off: 4096, Len: 8192}})
		m.checkPoint(t, rep, 1)
		tg.Close()
	}
	if clears == 0 {
		t.Fatal("no Clear Pages sent although Get Page Ranges failed: the fallback did not clear")
	}
}

func testCipher(t *testing.T) *azure.SectorCipher {
	t.Helper()
	c, err := azure.NewSectorCipher(cipherKey(7))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
