package azure_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"

	"lifeboat/hrl"
	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

func testPoint(seq uint64) targets.Point {
	return targets.Point{Seq: seq, Generation: 1, Kind: hrl.TagCrash, Name: "p", Time: time.Unix(1700000000+int64(seq), 0)}
}

// cloneClient is a shared-key client of the blob at a URL ClonePoint gave.
func cloneClient(t *testing.T, s *azuritetest.Server, url string) *blob.Client {
	t.Helper()
	cred, err := blob.NewSharedKeyCredential(s.Account, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := blob.NewClientWithSharedKeyCredential(url, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestClonePoint: a failover clone is a server-side copy of the point's
// snapshot, made by a Target that does not hold the replica (the process
// server holding its lease may be dead); it equals the snapshot byte for
// byte, outlives the point and later writes, and never overwrites a blob.
func TestClonePoint(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	ps := newTarget(t, s, cont, azure.Options{}) // the process server
	info := targets.VolumeInfo{ID: "3c1e9a52-7b04-4d1f-9e2a-5f6b7c8d9e01", Name: "vm1-root", Size: 5<<20 + 4096, BlockSize: 4096}
	rep, err := ps.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	m := newModel(info.Size, 1)
	m.scatter(t, rep, 40)
	if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
		t.Fatal(err)
	}
	atPoint1 := m.snapshot()
	m.scatter(t, rep, 10)
	if err := rep.CreatePoint(ctx, testPoint(2)); err != nil {
		t.Fatal(err)
	}

	failover := newTarget(t, s, cont, azure.Options{}) // the failover, without the lease
	url, err := failover.ClonePoint(ctx, info.ID, 1, "vm1-root-failover")
	if err != nil {
		t.Fatalf("ClonePoint: %v", err)
	}
	if want := "/" + cont + "/lb/failover/vm1-root-failover.vhd"; !strings.HasSuffix(url, want) || strings.Contains(url, "?") {
		t.Fatalf("clone URL %q, want one ending in %q with no query", url, want)
	}
	clone := cloneClient(t, s, url)
	cloned := download(t, clone)
	snapBytes := download(t, snapshotOf(t, containerClient(t, s, cont), "lb/"+info.ID+".vhd", 1).BlobClient())
	if !bytes.Equal(cloned, snapBytes) {
		t.Fatalf("clone (%d bytes) differs from the point's snapshot (%d bytes)", len(cloned), len(snapBytes))
	}
	if !bytes.Equal(cloned[:info.Size], atPoint1) {
		t.Fatal("clone's data is not the volume at point 1")
	}
	if f, err := azure.DecodeFooter(cloned[len(cloned)-azure.FooterSize:]); err != nil || f.CurrentSize != azure.VHDDataSize(info.Size) {
		t.Fatalf("clone's VHD footer: %+v, %v", f, err)
	}

	// The clone is independent of the point and of the replica.
	if err := rep.DeletePoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	m.apply(t, rep, []targets.Extent{{Off: 0, Data: m.random(1 << 20)}, {Off: 2 << 20, Len: 1 << 20}})
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 3}); err != nil {
		t.Fatal(err)
	}
	if again := download(t, clone); !bytes.Equal(again, cloned) {
		t.Fatal("the clone changed after DeletePoint and Apply")
	}

	for _, tc := range []struct {
		name       string
		vol        string
		seq        uint64
		clone      string
		want       error
		wantSubstr string
	}{
		{"same name", info.ID, 2, "vm1-root-failover", azure.ErrCloneExists, ""},
		{"same name with .vhd", info.ID, 2, "vm1-root-failover.vhd", azure.ErrCloneExists, ""},
		{"deleted point", info.ID, 1, "other", targets.ErrNotFound, ""},
		{"unknown seq", info.ID, 99, "other", targets.ErrNotFound, ""},
		{"unknown volume", "5d1e9a52-7b04-4d1f-9e2a-5f6b7c8d9e01", 1, "other", targets.ErrNotFound, ""},
		{"name with a slash", info.ID, 2, "../lb/" + info.ID, nil, "want 1 to 200 letters"},
		{"volume not a UUID", "vm1", 2, "other", nil, "not a UUID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := failover.ClonePoint(ctx, tc.vol, tc.seq, tc.clone)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantSubstr) {
				t.Fatalf("ClonePoint: %v, want %v %q", err, tc.want, tc.wantSubstr)
			}
		})
	}
	if again := download(t, clone); !bytes.Equal(again, cloned) {
		t.Fatal("a refused clone changed the existing one")
	}
	// A second name works from the newest point.
	if _, err := failover.ClonePoint(ctx, info.ID, 2, "vm1-root-2"); err != nil {
		t.Fatalf("ClonePoint of point 2: %v", err)
	}
	rep.Close()
	failover.Close()
	if _, err := failover.ClonePoint(ctx, info.ID, 2, "x"); !errors.Is(err, targets.ErrClosed) {
		t.Fatalf("ClonePoint on a closed target: %v, want ErrClosed", err)
	}
}

// TestClonePointEncrypted: a replica encrypted on the site is not cloned
// (the copy would hold ciphertext), with an error that says why.
func TestClonePointEncrypted(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	c, err := azure.NewSectorCipher(cipherKey(3))
	if err != nil {
		t.Fatal(err)
	}
	enc := newTarget(t, s, cont, azure.Options{Cipher: c})
	info := targets.VolumeInfo{ID: "4c1e9a52-7b04-4d1f-9e2a-5f6b7c8d9e01", Name: "v", Size: 1 << 20, BlockSize: 4096}
	rep, err := enc.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
		t.Fatal(err)
	}
	for _, tg := range []*azure.Target{enc, newTarget(t, s, cont, azure.Options{})} {
		if _, err := tg.ClonePoint(ctx, info.ID, 1, "v"); !errors.Is(err, azure.ErrCloneEncrypted) {
			t.Fatalf("ClonePoint of an encrypted replica: %v, want ErrCloneEncrypted", err)
		}
	}
}
