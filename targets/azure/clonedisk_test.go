package azure_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// CloneDisk of an encrypted replica's point is a fixed VHD page blob in
// plaintext: the data equals the volume at the point, the footer is valid;
// of a plain replica's point, the server-side copy. Cloning the same point
// under the same name again reuses the clone; another point is refused
// the name.
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
		// A retried failover reuses the finished clone of the same point;
		// another point is refused the name.
		if again, err := tg.CloneDisk(ctx, p, info.ID, name, nil); err != nil || again != url {
			t.Fatalf("the same point cloned again under its name: %q, %v; want the clone reused (%q)", again, err, url)
		}
		if err := rep.CreatePoint(ctx, testPoint(2)); err != nil {
			t.Fatal(err)
		}
		p2, err := rep.OpenPoint(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tg.CloneDisk(ctx, p2, info.ID, name, nil); !errors.Is(err, azure.ErrCloneExists) {
			t.Fatalf("another point under a clone's name: %v, want ErrCloneExists", err)
		}
		p2.Close()
		p.Close()
		rep.Close()
	}
}

// BenchmarkCloneDisk: a failover's --azure-disk copy of a 256 MiB point
// that is all data (no zero chunk to skip), per replica kind: plain (the
// service copies the snapshot) and encrypted (lifeboat uploads the
// plaintext). MB/s is of the volume's size.
func BenchmarkCloneDisk(b *testing.B) {
	ctx := context.Background()
	s := azuritetest.Start(b)
	const size = 256 << 20
	for _, enc := range []bool{false, true} {
		name := "plain"
		opts := azure.Options{}
		if enc {
			name = "encrypted"
			c, err := azure.NewSectorCipher(cipherKey(9))
			if err != nil {
				b.Fatal(err)
			}
			opts.Cipher = c
		}
		b.Run(name, func(b *testing.B) {
			cont := fmt.Sprintf("bench-%d", containerN.Add(1))
			s.NewContainer(b, cont)
			tg, err := azure.New(azure.Location{Account: s.Account, Container: cont, Prefix: "lb/"}, creds(s), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer tg.Close()
			info := targets.VolumeInfo{ID: "7a2e9a52-7b04-4d1f-9e2a-5f6b7c8d9e03", Name: "db", Size: size, BlockSize: 4096}
			rep, err := tg.Open(ctx, info)
			if err != nil {
				b.Fatal(err)
			}
			defer rep.Close()
			rng := rand.New(rand.NewPCG(9, 9))
			for off := int64(0); off < size; off += 4 << 20 {
				data := make([]byte, 4<<20)
				for i := range data {
					data[i] = byte(rng.Uint32())
				}
				if err := rep.Apply(ctx, []targets.Extent{{Off: off, Len: int64(len(data)), Data: data}}); err != nil {
					b.Fatal(err)
				}
			}
			if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
				b.Fatal(err)
			}
			p, err := rep.OpenPoint(ctx, 1)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			b.SetBytes(size)
			b.ResetTimer()
			for i := range b.N {
				if _, err := tg.CloneDisk(ctx, p, info.ID, fmt.Sprintf("bench-%d", i), nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
