package azure_test

// Helpers of the Azurite tests that look at the blobs directly, with the
// account key, around the target: download a blob or a point's snapshot,
// list page ranges, and keep a model of the volume.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// newTarget is a target on container cont of s with prefix "lb/".
func newTarget(t *testing.T, s *azuritetest.Server, cont string, opts azure.Options) *azure.Target {
	t.Helper()
	tg, err := azure.New(azure.Location{Account: s.Account, Container: cont, Prefix: "lb/"}, creds(s), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

// containerClient is a shared-key client of container cont.
func containerClient(t *testing.T, s *azuritetest.Server, cont string) *container.Client {
	return s.Container(t, cont)
}

// snapshotOf is the page blob client of the snapshot holding point seq of
// the blob name.
func snapshotOf(t *testing.T, c *container.Client, name string, seq uint64) *pageblob.Client {
	t.Helper()
	pager := c.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &name,
		Include: container.ListBlobsInclude{Snapshots: true, Metadata: true}})
	for pager.More() {
		resp, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range resp.Segment.BlobItems {
			if *it.Name != name || it.Snapshot == nil || *it.Snapshot == "" {
				continue
			}
			for k, v := range it.Metadata {
				if strings.EqualFold(k, "lifeboatseq") && v != nil && *v == strconv.FormatUint(seq, 10) {
					pb, err := c.NewPageBlobClient(name).WithSnapshot(*it.Snapshot)
					if err != nil {
						t.Fatal(err)
					}
					return pb
				}
			}
		}
	}
	t.Fatalf("no snapshot of %s holds point %d", name, seq)
	return nil
}

// download reads a whole blob (or snapshot).
func download(t *testing.T, b *blob.Client) []byte {
	t.Helper()
	resp, err := b.DownloadStream(context.Background(), nil)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	return data
}

// downloadFile writes a whole blob (or snapshot) to path with DownloadFile.
func downloadFile(t *testing.T, b *blob.Client, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := b.DownloadFile(context.Background(), f, nil); err != nil {
		t.Fatalf("download to %s: %v", path, err)
	}
}

// span is a byte range [lo, hi).
type span struct{ lo, hi int64 }

// pageRanges lists the blob's page ranges, adjacent ones merged (Azurite
// does not merge them).
func pageRanges(t *testing.T, pb *pageblob.Client) []span {
	t.Helper()
	var got []span
	pager := pb.NewGetPageRangesPager(nil)
	for pager.More() {
		resp, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatalf("get page ranges: %v", err)
		}
		for _, r := range resp.PageList.PageRange {
			if n := len(got); n > 0 && got[n-1].hi == *r.Start {
				got[n-1].hi = *r.End + 1
				continue
			}
			got = append(got, span{*r.Start, *r.End + 1})
		}
	}
	return got
}

// model is the expected content of a volume.
type model struct {
	data []byte
	rng  *rand.Rand
}

func newModel(size int64, seed uint64) *model {
	return &model{data: make([]byte, size), rng: rand.New(rand.NewPCG(seed, 0x1fe))}
}

func (m *model) apply(t *testing.T, rep targets.Replica, exts []targets.Extent) {
	t.Helper()
	if err := rep.Apply(context.Background(), exts); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, x := range exts {
		if x.Data != nil {
			copy(m.data[x.Off:], x.Data)
		} else {
			clear(m.data[x.Off : x.Off+x.Len])
		}
	}
}

// random is n random bytes.
func (m *model) random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := m.rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// scatter applies count random extents of 4 KiB to 256 KiB, some of them
// ZERO extents.
func (m *model) scatter(t *testing.T, rep targets.Replica, count int) {
	t.Helper()
	var exts []targets.Extent
	for range count {
		n := int64(1+m.rng.IntN(64)) * 4096
		off := m.rng.Int64N((int64(len(m.data))-n)/4096+1) * 4096
		if m.rng.IntN(5) == 0 {
			exts = append(exts, targets.Extent{Off: off, Len: n})
		} else {
			exts = append(exts, targets.Extent{Off: off, Data: m.random(int(n))})
		}
	}
	m.apply(t, rep, exts)
}

// snapshotModel is a copy of the current content.
func (m *model) snapshot() []byte { return append([]byte(nil), m.data...) }

// checkPoint makes point seq of rep and checks that it reads back as the
// model's content.
func (m *model) checkPoint(t *testing.T, rep targets.Replica, seq uint64) {
	t.Helper()
	ctx := context.Background()
	p := targets.Point{Seq: seq, Generation: 1, Name: fmt.Sprint("point ", seq), Time: time.Unix(1700000000+int64(seq), 0)}
	if err := rep.CreatePoint(ctx, p); err != nil {
		t.Fatalf("CreatePoint %d: %v", seq, err)
	}
	pr, err := rep.OpenPoint(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	got := make([]byte, len(m.data))
	if _, err := pr.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m.data) {
		t.Fatalf("point %d differs from what was applied", seq)
	}
}
