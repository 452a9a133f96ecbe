package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"lifeboat/targets/azure/azuritetest"
)

var containerN atomic.Int64

// azureSite starts a site whose server keeps its replicas in a fresh
// container on Azurite, with the credentials in the environment as an
// admin would give them; args are more server flags.
func azureSite(t *testing.T, az *azuritetest.Server, env []string, args ...string) (*site, *container.Client) {
	t.Helper()
	name := fmt.Sprintf("e2e-%d", containerN.Add(1))
	cc := az.NewContainer(t, name)
	env = append(env, "AZURE_STORAGE_CONNECTION_STRING="+az.ConnectionString())
	return newSiteWith(t, env, append([]string{"--target", azureTarget(az, name)}, args...)), cc
}

func azureTarget(az *azuritetest.Server, cont string) string {
	return "azure://" + az.Account + "/" + cont
}

// downloadBlob writes the only volume blob of the container to a file: its
// current content, or with seq > 0 the snapshot that is recovery point seq.
func downloadBlob(t *testing.T, cc *container.Client, seq uint64) string {
	t.Helper()
	ctx := context.Background()
	pager := cc.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Include: container.ListBlobsInclude{Snapshots: true, Metadata: true}})
	var name, snap string
	var seen []string
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range resp.Segment.BlobItems {
			if !strings.HasSuffix(*it.Name, ".vhd") || strings.Contains(*it.Name, "/") {
				continue
			}
			s := ""
			if it.Snapshot != nil {
				s = *it.Snapshot
			}
			itSeq := metaValue(it.Metadata, "lifeboatseq")
			seen = append(seen, *it.Name+"@"+s+" seq "+itSeq)
			if (seq == 0 && s == "") || (seq > 0 && s != "" && itSeq == strconv.FormatUint(seq, 10)) {
				name, snap = *it.Name, s
			}
		}
	}
	if name == "" {
		t.Fatalf("no blob for point %d among %v", seq, seen)
	}
	bc := cc.NewBlobClient(name)
	if snap != "" {
		var err error
		if bc, err = bc.WithSnapshot(snap); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "blob.vhd")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := bc.DownloadFile(ctx, f, nil); err != nil {
		t.Fatalf("download %s@%s: %v", name, snap, err)
	}
	return out
}

func metaValue(m map[string]*string, key string) string {
	for k, v := range m {
		if strings.EqualFold(k, key) && v != nil {
			return *v
		}
	}
	return ""
}

// checkVHD checks that vhd is a fixed VHD that qemu-img reads with the
// virtual size of raw and the same content.
func checkVHD(t *testing.T, vhd, raw string) {
	t.Helper()
	need(t, "qemu-img")
	st, err := os.Stat(raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "info", "-f", "vpc", "--output=json", vhd).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info -f vpc: %v\n%s", err, out)
	}
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if info.Format != "vpc" || info.VirtualSize != st.Size() {
		t.Fatalf("qemu-img info: format %q, virtual size %d; want vpc, %d (the volume's size)", info.Format, info.VirtualSize, st.Size())
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "vpc", "-F", "raw", vhd, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare -f vpc -F raw: %v\n%s", err, out)
	}
}

// copyFile copies src to a new file and returns its path.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src)+".copy")
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	return dst
}

// waitLog waits until the site's servers have printed want.
func (s *site) waitLog(want string, timeout time.Duration) {
	s.t.Helper()
	waitFor(s.t, timeout, fmt.Sprintf("the server to log %q", want), func() bool { return strings.Contains(s.log(), want) })
}
