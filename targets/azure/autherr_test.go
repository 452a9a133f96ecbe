package azure_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// TestAuthErrors: wrong or insufficient credentials and a missing container
// fail with the package's permanent errors, in one line that says what to
// do, without the key or the SAS signature.
func TestAuthErrors(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	info := targets.VolumeInfo{ID: "2e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", Name: "auth", Size: 1 << 20, BlockSize: 4096}
	// An existing replica, not open.
	rep, err := newTarget(t, s, cont, azure.Options{}).Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.CreatePoint(ctx, testPoint(1)); err != nil {
		t.Fatal(err)
	}
	rep.Close()

	roToken, roSig := containerSAS(t, s, cont, readOnlyPerms, time.Now().Add(time.Hour))
	accToken, accSig := accountSAS(t, s)
	raw := make([]byte, 64)
	rand.Read(raw)
	wrongKey := base64.StdEncoding.EncodeToString(raw)
	wrongKeyTarget, err := azure.New(azure.Location{Account: s.Account, Container: cont, Prefix: "lb/"},
		azure.Credentials{Account: s.Account, Key: wrongKey, Endpoint: s.URL + "/"}, azure.Options{MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	ro := sasTarget(t, s, cont, roToken, azure.Options{MaxRetries: -1})
	other := info
	other.ID = "3e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0"
	secrets := []string{s.Key, wrongKey, roSig, accSig}

	for _, tc := range []struct {
		name string
		op   func() error
		want error
	}{
		{"read-only SAS: Open of a new replica", func() error { _, err := ro.Open(ctx, other); return err }, azure.ErrAuth},
		{"read-only SAS: Open of an existing replica", func() error { _, err := ro.Open(ctx, info); return err }, azure.ErrAuth},
		{"read-only SAS: ClonePoint", func() error { _, err := ro.ClonePoint(ctx, info.ID, 1, "ro"); return err }, azure.ErrAuth},
		{"wrong key: Volumes", func() error { _, err := wrongKeyTarget.Volumes(ctx); return err }, azure.ErrAuth},
		{"wrong key: Open", func() error { _, err := wrongKeyTarget.Open(ctx, info); return err }, azure.ErrAuth},
		{"missing container, key: Open", func() error {
			_, err := newTarget(t, s, "no-such-container", azure.Options{}).Open(ctx, info)
			return err
		}, azure.ErrContainerNotFound},
		{"missing container, key: Volumes", func() error {
			_, err := newTarget(t, s, "no-such-container", azure.Options{}).Volumes(ctx)
			return err
		}, azure.ErrContainerNotFound},
		{"missing container, SAS: Open", func() error {
			_, err := sasTarget(t, s, "no-such-container", accToken, azure.Options{}).Open(ctx, info)
			return err
		}, azure.ErrContainerNotFound},
		{"missing container, SAS: ClonePoint", func() error {
			_, err := sasTarget(t, s, "no-such-container", accToken, azure.Options{}).ClonePoint(ctx, info.ID, 1, "x")
			return err
		}, azure.ErrContainerNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line:\n%v", err)
			}
			noSecrets(t, err, secrets...)
			t.Logf("%v", err)
		})
	}
}

// TestSASExpiresDuringReplication: a SAS token that expires while a
// replica is open fails the next Apply with ErrAuth.
func TestSASExpiresDuringReplication(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	expiry := time.Now().Add(3 * time.Second).Truncate(time.Second) // a SAS has whole seconds
	token, sig := containerSAS(t, s, cont, replicaPerms, expiry)
	tg := sasTarget(t, s, cont, token, azure.Options{MaxRetries: -1})
	info := targets.VolumeInfo{ID: "4e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0", Name: "exp", Size: 1 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4096)
	data[0] = 1
	if err := rep.Apply(ctx, []targets.Extent{{Off: 0, Data: data}}); err != nil {
		t.Fatalf("Apply before expiry: %v", err)
	}
	time.Sleep(time.Until(expiry.Add(1100 * time.Millisecond)))
	err = rep.Apply(ctx, []targets.Extent{{Off: 4096, Data: data}})
	if !errors.Is(err, azure.ErrAuth) {
		t.Fatalf("Apply after the SAS expired: %v, want ErrAuth", err)
	}
	noSecrets(t, err, sig)
	t.Logf("%v", err)
}

// TestTransportErrorHidesSAS: a request that never reaches the service
// fails with Go's transport error, which quotes the request URL: its SAS
// signature is redacted.
func TestTransportErrorHidesSAS(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := fmt.Sprintf("http://%s/%s/", l.Addr(), azuritetest.Account)
	l.Close() // nothing listens there now
	const sig = "c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw=="
	token := "sv=2024-05-04&ss=b&srt=co&sp=rwdlac&se=2099-01-01T00:00:00Z&spr=https,http&sig=" + sig
	tg, err := azure.New(azure.Location{Account: azuritetest.Account, Container: "c1", Prefix: "lb/"},
		azure.Credentials{Account: azuritetest.Account, SAS: token, Endpoint: endpoint}, azure.Options{MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	_, err = tg.Volumes(context.Background())
	if err == nil || !strings.Contains(err.Error(), "sig=REDACTED") {
		t.Fatalf("Volumes against a closed port: %v, want a transport error with the signature redacted", err)
	}
	noSecrets(t, err, sig)
}
