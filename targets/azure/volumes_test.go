package azure_test

import (
	"context"
	"slices"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// TestVolumesListsOnlyReplicas: Volumes lists the replica blobs directly
// under the prefix, not failover clones, not copies of a replica in a
// folder below the prefix or under another name, nor blobs outside the
// prefix, even when their metadata is a replica's.
func TestVolumesListsOnlyReplicas(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	tg := newTarget(t, s, cont, azure.Options{})
	info := targets.VolumeInfo{ID: "8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "only", Size: 1 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := tg.ClonePoint(ctx, info.ID, 1, "only-failover"); err != nil {
		t.Fatal(err)
	}
	// Copies of the replica blob, with its metadata, elsewhere.
	c := containerClient(t, s, cont)
	src := c.NewBlobClient("lb/" + info.ID + ".vhd").URL()
	for _, name := range []string{
		"lb/nested/" + info.ID + ".vhd",
		"lb/copy-of-only.vhd",
		"other/" + info.ID + ".vhd",
		"lb/failover/" + info.ID + ".vhd",
	} {
		resp, err := c.NewBlobClient(name).StartCopyFromURL(ctx, src, nil)
		if err != nil || resp.CopyStatus == nil || *resp.CopyStatus != blob.CopyStatusTypeSuccess {
			t.Fatalf("copy to %s: %v", name, err)
		}
	}
	vols, err := tg.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(vols, []targets.VolumeInfo{info}) {
		t.Fatalf("Volumes() = %+v, want only %+v", vols, info)
	}
}
