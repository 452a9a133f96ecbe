package azure_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// Permissions of the SAS tokens in these tests.
var (
	replicaPerms  = sas.ContainerPermissions{Read: true, Add: true, Create: true, Write: true, Delete: true, List: true}
	readOnlyPerms = sas.ContainerPermissions{Read: true, List: true}
)

// containerSAS is a container SAS token for cont, signed with the dev key.
func containerSAS(t *testing.T, s *azuritetest.Server, cont string, perms sas.ContainerPermissions, expiry time.Time) (token, sig string) {
	t.Helper()
	cred, err := service.NewSharedKeyCredential(s.Account, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	qp, err := sas.BlobSignatureValues{Protocol: sas.ProtocolHTTPSandHTTP, ExpiryTime: expiry,
		ContainerName: cont, Permissions: perms.String()}.SignWithSharedKey(cred)
	if err != nil {
		t.Fatal(err)
	}
	return qp.Encode(), qp.Signature()
}

// accountSAS is an account SAS token for the blob service, read and write.
func accountSAS(t *testing.T, s *azuritetest.Server) (token, sig string) {
	t.Helper()
	cred, err := service.NewSharedKeyCredential(s.Account, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	qp, err := sas.AccountSignatureValues{Protocol: sas.ProtocolHTTPSandHTTP, ExpiryTime: time.Now().Add(time.Hour),
		Permissions:   (&sas.AccountPermissions{Read: true, Write: true, Delete: true, List: true, Add: true, Create: true}).String(),
		ResourceTypes: (&sas.AccountResourceTypes{Container: true, Object: true}).String()}.SignWithSharedKey(cred)
	if err != nil {
		t.Fatal(err)
	}
	return qp.Encode(), qp.Signature()
}

func sasTarget(t *testing.T, s *azuritetest.Server, cont, token string, opts azure.Options) *azure.Target {
	t.Helper()
	tg, err := azure.New(azure.Location{Account: s.Account, Container: cont, Prefix: "lb/"},
		azure.Credentials{Account: s.Account, SAS: token, Endpoint: s.URL + "/"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return tg
}

// noSecrets fails if err's text shows a secret, raw or URL-encoded.
func noSecrets(t *testing.T, err error, secrets ...string) {
	t.Helper()
	for _, sec := range secrets {
		for _, form := range []string{sec, url.QueryEscape(sec), url.PathEscape(sec)} {
			if form != "" && strings.Contains(err.Error(), form) {
				t.Fatalf("error shows a secret: %v", err)
			}
		}
	}
}

// TestContainerSAS: a container SAS token with read, add, create, write,
// delete and list permissions is enough for a process server. Requests to
// a snapshot (reading or deleting a point) with it are refused by Azurite
// 3.35, which puts the request's snapshot parameter in the string to sign
// of a container SAS (Azure/Azurite#1857, open); the test accepts that
// refusal there. With an account SAS (TestSASLifecycle) Azurite serves
// everything.
func TestContainerSAS(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	token, sig := containerSAS(t, s, cont, replicaPerms, time.Now().Add(time.Hour))
	tg := sasTarget(t, s, cont, token, azure.Options{MaxRetries: -1})
	info := targets.VolumeInfo{ID: "0e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", Name: "csas", Size: 1 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	m := newModel(info.Size, 10)
	m.scatter(t, rep, 10)
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 1}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := rep.CreatePoint(ctx, testPoint(2)); err != nil {
		t.Fatalf("CreatePoint: %v", err)
	}
	if ps, err := rep.Points(ctx); err != nil || len(ps) != 1 || ps[0].Seq != 2 {
		t.Fatalf("Points = %+v, %v", ps, err)
	}
	if vols, err := tg.Volumes(ctx); err != nil || !slices.Equal(vols, []targets.VolumeInfo{info}) {
		t.Fatalf("Volumes = %+v, %v", vols, err)
	}
	pr, err := rep.OpenPoint(ctx, 2)
	if err != nil {
		t.Fatalf("OpenPoint: %v", err)
	}
	// refused is true when Azurite refused a request to a snapshot.
	refused := func(what string, err error) bool {
		if !errors.Is(err, azure.ErrAuth) {
			return false
		}
		noSecrets(t, err, sig)
		t.Logf("%s with a container SAS: refused (Azurite#1857): %v", what, err)
		return true
	}
	got := make([]byte, info.Size)
	if _, err := pr.ReadAt(got, 0); !refused("reading a point", err) {
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("ReadAt: %v", err)
		}
		if !bytes.Equal(got, m.data) {
			t.Fatal("the point does not read back what was applied")
		}
	}
	if err := rep.DeletePoint(ctx, 2); err != nil && !refused("deleting a point", err) {
		t.Fatalf("DeletePoint: %v", err)
	}
	if err := rep.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestSASLifecycle: with an account SAS token, everything a process server
// and a failover do works, including the server-side clone, whose source
// URL carries the token and whose returned URL does not.
func TestSASLifecycle(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	token, sig := accountSAS(t, s)
	tg := sasTarget(t, s, cont, token, azure.Options{})
	info := targets.VolumeInfo{ID: "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", Name: "sas", Size: 2 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	m := newModel(info.Size, 9)
	m.scatter(t, rep, 20)
	if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: 1}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := rep.CreatePoint(ctx, testPoint(2)); err != nil {
		t.Fatalf("CreatePoint: %v", err)
	}
	pr, err := rep.OpenPoint(ctx, 2)
	if err != nil {
		t.Fatalf("OpenPoint: %v", err)
	}
	got := make([]byte, info.Size)
	if _, err := pr.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt: %v", err)
	}
	if !bytes.Equal(got, m.data) {
		t.Fatal("the point does not read back what was applied")
	}
	vols, err := tg.Volumes(ctx)
	if err != nil || !slices.Equal(vols, []targets.VolumeInfo{info}) {
		t.Fatalf("Volumes = %+v, %v", vols, err)
	}
	url, err := tg.ClonePoint(ctx, info.ID, 2, "sas-clone")
	if err != nil {
		t.Fatalf("ClonePoint: %v", err)
	}
	if strings.Contains(url, "?") || strings.Contains(url, sig) {
		t.Fatalf("clone URL %q carries the SAS token", url)
	}
	if clone := download(t, cloneClient(t, s, url)); !bytes.Equal(clone[:info.Size], m.data) {
		t.Fatal("the clone made with a SAS token differs from the point")
	}
	if _, err := rep.Usage(ctx); err != nil {
		t.Fatalf("Usage: %v", err)
	}
	if err := rep.DeletePoint(ctx, 2); err != nil {
		t.Fatalf("DeletePoint: %v", err)
	}
	if err := rep.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
