package e2e

import (
	"context"
	"crypto/rand"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"lifeboat/targets/azure/azuritetest"
)

// downloadURL writes the blob at u (a clone's URL, in container cc) to a
// file.
func downloadURL(t *testing.T, cc *container.Client, u string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.SplitN(strings.TrimPrefix(pu.Path, "/"), "/", 3) // account, container, blob
	if len(parts) != 3 {
		t.Fatalf("clone URL %q: want .../ACCOUNT/CONTAINER/BLOB", u)
	}
	out := filepath.Join(t.TempDir(), "clone.vhd")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := cc.NewBlobClient(parts[2]).DownloadFile(context.Background(), f, nil); err != nil {
		t.Fatalf("download %s: %v", parts[2], err)
	}
	return out
}

// Azure on Azurite, encrypted at rest: a test failover and a failover
// read the point's plaintext over NBD, and the --azure-disk clone is a
// fixed VHD (qemu-img info -f vpc) equal to the point's plaintext
// (qemu-img compare). The agent, alive, is told it is failed over.
func TestAzureEncryptedFailover(t *testing.T) {
	need(t, "nbdcopy", "qemu-img")
	az := azuritetest.Start(t)
	s, cc := azureSite(t, az, nil, "--encryption-key", writeKey(t), "--recovery-nbd", "127.0.0.1:0")
	p := protect(t, s, 32<<20, 4<<20)
	src := filepath.Join(t.TempDir(), "src.bin")
	buf := make([]byte, 6<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	run(t, "nbdcopy", "--flush", src, p.uri)
	seq, sum := p.checkLatest(start)
	atPoint := copyFile(t, p.img)
	point := []string{"--point", strconv.FormatUint(seq, 10)}

	test := s.recovery(append([]string{"test-failover", "start", "disk"}, point...)...)
	if got := nbdSum(t, test.URL); got != sum {
		t.Fatalf("test failover of encrypted point %d reads %s over NBD, the plaintext is %s", seq, got, sum)
	}
	s.recovery("test-failover", "cleanup", "disk")

	fo := s.recovery(append([]string{"failover", "start", "disk", "--azure-disk"}, point...)...)
	if fo.Point.Seq != seq || fo.AzureDisk == "" {
		t.Fatalf("failover: %+v; want point %d and an Azure disk", fo, seq)
	}
	if got := nbdSum(t, fo.URL); got != sum {
		t.Fatalf("failover volume of encrypted point %d reads %s over NBD, the plaintext is %s", seq, got, sum)
	}
	checkVHD(t, downloadURL(t, cc, fo.AzureDisk), atPoint)
	waitFor(t, 30*time.Second, "the agent to say it is failed over", func() bool {
		return strings.Contains(shipperStatus(t, p.jroot, "disk").Stopped, "failed over at the site")
	})
}
