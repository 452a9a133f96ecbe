package azure_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"

	"lifeboat/hrl"
	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
	"lifeboat/targets/targettest"
)

func cipherKey(b byte) []byte {
	k := make([]byte, azure.XTSKeySize)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func TestConformanceEncrypted(t *testing.T) {
	s := azuritetest.Start(t)
	c, err := azure.NewSectorCipher(cipherKey(1))
	if err != nil {
		t.Fatal(err)
	}
	targettest.Run(t, opener(s, azure.Options{Cipher: c}))
}

// TestEncryption: the raw blob holds none of the plaintext, a point reads
// it back, a wrong key and a missing key are refused at open.
func TestEncryption(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	c, err := azure.NewSectorCipher(cipherKey(1))
	if err != nil {
		t.Fatal(err)
	}
	open := opener(s, azure.Options{Cipher: c})
	tg := open(t)
	info := targets.VolumeInfo{ID: "0b2f7c1e-5d0a-4f8e-a1b3-2c4d6e8f0a1b", Name: "v", Size: 1 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	plain := bytes.Repeat([]byte("lifeboat plaintext block marker!"), 4096/32)
	var exts []targets.Extent
	for off := int64(0); off < 64<<10; off += 8192 {
		exts = append(exts, targets.Extent{Off: off, Data: plain})
	}
	exts = append(exts, targets.Extent{Off: 100, Data: []byte("unaligned plaintext marker")})
	if err := rep.Apply(ctx, exts); err != nil {
		t.Fatal(err)
	}
	p := targets.Point{Seq: 1, Generation: 1, Kind: hrl.TagCrash, Name: "p", Time: time.Unix(1700000000, 0)}
	if err := rep.CreatePoint(ctx, p); err != nil {
		t.Fatal(err)
	}
	pr, err := rep.OpenPoint(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<10)
	if _, err := pr.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	want := make([]byte, 64<<10)
	for _, x := range exts {
		copy(want[x.Off:], x.Data)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("point does not read back the plaintext")
	}
	pr.Close()

	// Raw bytes of the blob, without the key.
	raw := downloadRaw(t, s, info)
	if bytes.Contains(raw, plain[:32]) || bytes.Contains(raw, []byte("unaligned plaintext marker")) {
		t.Fatal("raw blob contains plaintext")
	}
	rep.Close()

	wrong, _ := azure.NewSectorCipher(cipherKey(2))
	for _, tc := range []struct {
		o    azure.Options
		want error
	}{{azure.Options{Cipher: wrong}, azure.ErrWrongKey}, {azure.Options{}, azure.ErrEncrypted}} {
		tg2 := sameContainer(t, s, tc.o)
		// At a process server's start, before any replica is opened.
		if err := tg2.(*azure.Target).CheckKeys(ctx); !errors.Is(err, tc.want) {
			t.Fatalf("CheckKeys with key %v: %v, want %v", tc.o.Cipher != nil, err, tc.want)
		}
		if _, err := tg2.Open(ctx, info); !errors.Is(err, tc.want) {
			t.Fatalf("Open with key %v: %v, want %v", tc.o.Cipher != nil, err, tc.want)
		} else {
			t.Logf("refused as expected: %v", err)
		}
		tg2.Close()
	}
	if err := sameContainer(t, s, azure.Options{Cipher: c}).(*azure.Target).CheckKeys(ctx); err != nil {
		t.Fatalf("CheckKeys with the right key: %v", err)
	}
}

// sameContainer is a target with options o on the container made last.
func sameContainer(t *testing.T, s *azuritetest.Server, o azure.Options) targets.Target {
	tg, err := azure.New(azure.Location{Account: s.Account, Container: lastName, Prefix: "lb/"},
		azure.Credentials{Account: s.Account, Key: s.Key, Endpoint: s.URL + "/"}, o)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// downloadRaw reads the replica blob's bytes as stored, without the key.
func downloadRaw(t *testing.T, s *azuritetest.Server, info targets.VolumeInfo) []byte {
	t.Helper()
	cred, err := blob.NewSharedKeyCredential(s.Account, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := blob.NewClientWithSharedKeyCredential(s.URL+"/"+lastName+"/lb/"+info.ID+".vhd", cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.DownloadStream(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
