package azuritetest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"lifeboat/targets/azure/azuritetest"
)

// newContainer creates a container on s and returns its client. Retries are
// off, so a request to a stopped Azurite fails at once.
func newContainer(t *testing.T, ctx context.Context, s *azuritetest.Server, name string) *container.Client {
	t.Helper()
	cred, err := container.NewSharedKeyCredential(s.Account, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}}}
	c, err := container.NewClientWithSharedKeyCredential(s.URL+"/"+name, cred, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, nil); err != nil {
		t.Fatalf("create container %s: %v", name, err)
	}
	return c
}

type rng struct{ start, end int64 } // inclusive, as Get Page Ranges says

func pageRanges(t *testing.T, ctx context.Context, pb *pageblob.Client) []rng {
	t.Helper()
	var got []rng
	pager := pb.NewGetPageRangesPager(nil)
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("get page ranges: %v", err)
		}
		for _, r := range resp.PageList.PageRange {
			// Azurite does not merge adjacent ranges; the test does.
			if n := len(got); n > 0 && got[n-1].end+1 == *r.Start {
				got[n-1].end = *r.End
				continue
			}
			got = append(got, rng{*r.Start, *r.End})
		}
	}
	return got
}

func download(t *testing.T, ctx context.Context, pb *pageblob.Client, size int64) []byte {
	t.Helper()
	buf := make([]byte, size)
	if _, err := pb.DownloadBuffer(ctx, buf, nil); err != nil {
		t.Fatalf("download %s: %v", pb.URL(), err)
	}
	return buf
}

func upload(t *testing.T, ctx context.Context, pb *pageblob.Client, off int64, data []byte) {
	t.Helper()
	_, err := pb.UploadPages(ctx, streaming(data), blob.HTTPRange{Offset: off, Count: int64(len(data))}, nil)
	if err != nil {
		t.Fatalf("upload %d bytes at %d: %v", len(data), off, err)
	}
}

func streaming(b []byte) nopCloser { return nopCloser{bytes.NewReader(b)} }

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)*31 + seed | 1
	}
	return b
}

// TestAzurite proves the harness and the page blob calls the Azure target
// relies on: create, Upload Pages, Get Page Ranges, Clear Pages, a snapshot,
// and that a stop and start of Azurite keep blobs and snapshots.
func TestAzurite(t *testing.T) {
	s := azuritetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := newContainer(t, ctx, s, "replicas")

	const size = 1 << 20
	pb := c.NewPageBlobClient("vol.vhd")
	if _, err := pb.Create(ctx, size, nil); err != nil {
		t.Fatalf("create page blob: %v", err)
	}
	want := make([]byte, size)
	a, b := pattern(64<<10, 1), pattern(4096, 2)
	upload(t, ctx, pb, 0, a)
	upload(t, ctx, pb, 512<<10, b)
	copy(want, a)
	copy(want[512<<10:], b)
	if _, err := pb.ClearPages(ctx, blob.HTTPRange{Offset: 16 << 10, Count: 16 << 10}, nil); err != nil {
		t.Fatalf("clear pages: %v", err)
	}
	clear(want[16<<10 : 32<<10])
	wantRanges := []rng{{0, 16<<10 - 1}, {32 << 10, 64<<10 - 1}, {512 << 10, 512<<10 + 4095}}
	if got := pageRanges(t, ctx, pb); fmt.Sprint(got) != fmt.Sprint(wantRanges) {
		t.Errorf("page ranges: got %v, want %v", got, wantRanges)
	}
	if _, err := pb.UploadPages(ctx, streaming(make([]byte, 100)), blob.HTTPRange{Offset: 0, Count: 100}, nil); err == nil {
		t.Errorf("upload of 100 bytes accepted, want it refused as unaligned")
	}

	snap, err := pb.CreateSnapshot(ctx, &blob.CreateSnapshotOptions{Metadata: map[string]*string{"seq": ptr("42")}})
	if err != nil {
		t.Fatalf("create snapshot: %v", err)
	}
	snapPB, err := pb.WithSnapshot(*snap.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	// Writes after the snapshot change the blob, not the snapshot.
	snapWant := bytes.Clone(want)
	upload(t, ctx, pb, 0, pattern(4096, 3))
	copy(want, pattern(4096, 3))

	check := func(when string) {
		t.Helper()
		if got := download(t, ctx, pb, size); !bytes.Equal(got, want) {
			t.Errorf("%s: blob content differs", when)
		}
		if got := download(t, ctx, snapPB, size); !bytes.Equal(got, snapWant) {
			t.Errorf("%s: snapshot content differs", when)
		}
		if got := pageRanges(t, ctx, snapPB); fmt.Sprint(got) != fmt.Sprint(wantRanges) {
			t.Errorf("%s: snapshot page ranges: got %v, want %v", when, got, wantRanges)
		}
		props, err := snapPB.GetProperties(ctx, nil)
		if err != nil {
			t.Fatalf("%s: snapshot properties: %v", when, err)
		}
		if v := props.Metadata["Seq"]; v == nil || *v != "42" {
			if v = props.Metadata["seq"]; v == nil || *v != "42" {
				t.Errorf("%s: snapshot metadata %v, want seq=42", when, props.Metadata)
			}
		}
	}
	check("before restart")

	start := time.Now()
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("stopped in %v", time.Since(start))
	if _, err := pb.GetProperties(ctx, nil); err == nil {
		t.Fatalf("a stopped Azurite answered")
	}
	start = time.Now()
	if err := s.Start(); err != nil {
		t.Fatalf("start again: %v", err)
	}
	t.Logf("started again in %v", time.Since(start))
	check("after restart")
}

// TestAzuriteStopFor acts out a short outage: requests fail while Azurite is
// down, work again after it is back, and nothing was lost.
func TestAzuriteStopFor(t *testing.T) {
	s := azuritetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pb := newContainer(t, ctx, s, "outage").NewPageBlobClient("vol")
	if _, err := pb.Create(ctx, 64<<10, nil); err != nil {
		t.Fatal(err)
	}
	data := pattern(8192, 9)
	upload(t, ctx, pb, 4096, data)

	back, err := s.StopFor(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pb.GetProperties(ctx, nil); err == nil {
		t.Errorf("Azurite answered during the outage")
	}
	if err := <-back; err != nil {
		t.Fatalf("start after the outage: %v", err)
	}
	got := download(t, ctx, pb, 64<<10)
	if !bytes.Equal(got[4096:4096+8192], data) {
		t.Errorf("data written before the outage is gone")
	}
}

// TestAzuriteLargeClear checks what the coalescer relies on: Clear Pages is
// not limited to 4 MiB like Upload Pages.
func TestAzuriteLargeClear(t *testing.T) {
	s := azuritetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pb := newContainer(t, ctx, s, "clear").NewPageBlobClient("vol")
	const size = 12 << 20
	if _, err := pb.Create(ctx, size, nil); err != nil {
		t.Fatal(err)
	}
	upload(t, ctx, pb, 0, pattern(4<<20, 4))
	upload(t, ctx, pb, 8<<20, pattern(4<<20, 5))
	// Azure refuses an Upload Pages over 4 MiB; Azurite 3.35 does not, so
	// only the planner's tests keep calls within the limit.
	if _, err := pb.UploadPages(ctx, streaming(pattern(4<<20+512, 6)), blob.HTTPRange{Offset: 0, Count: 4<<20 + 512}, nil); err == nil {
		t.Logf("Azurite accepted an Upload Pages of 4 MiB + 512 bytes (Azure refuses it)")
	}
	if _, err := pb.ClearPages(ctx, blob.HTTPRange{Offset: 0, Count: size}, nil); err != nil {
		t.Fatalf("clear 12 MiB in one call: %v", err)
	}
	if got := pageRanges(t, ctx, pb); len(got) != 0 {
		t.Errorf("page ranges after clearing all: %v, want none", got)
	}
	if got := download(t, ctx, pb, size); !bytes.Equal(got, make([]byte, size)) {
		t.Errorf("blob not all zero after clearing all")
	}
}

func TestFindNotInstalled(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(azuritetest.EnvBinary, filepath.Join(dir, "nowhere", "azurite"))
	t.Setenv("PATH", dir)
	t.Setenv("XDG_CACHE_HOME", dir)
	if p, err := azuritetest.Find(); !errors.Is(err, azuritetest.ErrNotInstalled) {
		t.Fatalf("Find: got %q, %v, want ErrNotInstalled", p, err)
	}
	// An azurite-blob beside the azurite that LIFEBOAT_AZURITE names is used.
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "azurite-blob"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(azuritetest.EnvBinary, filepath.Join(bin, "azurite"))
	if p, err := azuritetest.Find(); err != nil || p != filepath.Join(bin, "azurite-blob") {
		t.Fatalf("Find: got %q, %v, want %s", p, err, filepath.Join(bin, "azurite-blob"))
	}
}

func ptr[T any](v T) *T { return &v }
