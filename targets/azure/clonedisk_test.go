package azure_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// CloneDisk of an encrypted replica's point is a fixed VHD page blob in
// plaintext: the data equals the volume at the point, the footer is valid,
// a name in use is refused; of a plain replica's point, the server-side
// copy.
func TestCloneDiskDecrypts(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	for _, enc := range []bool{true, false} {
		opts := azure.Options{}
		id := "5d2e9a52-7b04-4d1f-9e2a-5f6b7c8d9e01"
		if enc {
			opts.Cipher = testCipher(t)
			id = "5d2e9a52-7b04-4d1f-9e2a-5f6b7c8d9e02"
		}
		tg := newTarget(t, s, cont, opts)
		info := targets.VolumeInfo{ID: id, Name: "db", Size: 9<<20 + 4096, BlockSize: 4096}
		rep, err := tg.Open(ctx, info)
		if err != nil {
			t.Fatal(err)
		}
		m := newModel(info.Size, 5)
		m.scatter(t, rep, 30)
		if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
			t.Fatal(err)
		}
		want := m.snapshot()
		m.scatter(t, rep, 10) // after the point: not in the clone
		p, err := rep.OpenPoint(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		var calls int
		var done int64
		name := "db-failover-plain"
		if enc {
			name = "db-failover-enc"
		}
		url, err := tg.CloneDisk(ctx, p, info.ID, name, func(d, total int64) { calls, done = calls+1, d })
		if err != nil {
			t.Fatalf("CloneDisk (encrypted %v): %v", enc, err)
		}
		if calls == 0 || done != info.Size {
			t.Fatalf("progress: %d calls, last at %d of %d", calls, done, info.Size)
		}
		got := download(t, cloneClient(t, s, url))
		if len(got) != int(azure.VHDDataSize(info.Size))+azure.FooterSize {
			t.Fatalf("clone is %d bytes, want %d", len(got), azure.VHDDataSize(info.Size)+azure.FooterSize)
		}
		if !bytes.Equal(got[:info.Size], want) {
			t.Fatalf("clone's data (encrypted replica %v) is not the plaintext of the point", enc)
		}
		if f, err := azure.DecodeFooter(got[len(got)-azure.FooterSize:]); err != nil || f.CurrentSize != azure.VHDDataSize(info.Size) {
			t.Fatalf("clone's VHD footer: %+v, %v", f, err)
		}
		if _, err := tg.CloneDisk(ctx, p, info.ID, name, nil); !errors.Is(err, azure.ErrCloneExists) {
			t.Fatalf("second clone with the same name: %v, want ErrCloneExists", err)
		}
		p.Close()
		rep.Close()
	}
}
