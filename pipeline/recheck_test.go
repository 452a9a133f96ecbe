package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets/memory"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A client revoked while its keep-alive connection is open gets 403 on
// its next request over that connection, which the server then closes;
// the refusal is logged with its name. Serve does this for every
// configuration from pki.ServerTLS.
func TestServeRefusesRevokedOnOpenConnection(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Init(dir, nil); err != nil {
		t.Fatal(err)
	}
	conf, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := pipeline.NewServer(dir, memory.New(), conf)
	log := &lockedBuffer{}
	srv.Logger = slog.New(slog.NewTextHandler(log, nil))
	if err := srv.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.Issue("web01", pki.RoleAgent, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cdir := t.TempDir()
	if err := id.Write(cdir, "web01"); err != nil {
		t.Fatal(err)
	}
	cli, err := pki.ClientTLS(filepath.Join(cdir, "web01.crt"), filepath.Join(cdir, "web01.key"), filepath.Join(cdir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cli}, Timeout: 30 * time.Second}
	url := "https://" + ln.Addr().String() + "/v1/volumes"
	get := func() (*http.Response, bool) {
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", url, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		return resp, reused
	}
	resp, _ := get()
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("before the revocation: %s", resp.Status)
	}

	if _, err := ca.Revoke(pki.Revocation{Name: "web01"}); err != nil {
		t.Fatal(err)
	}
	resp, reused := get()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !reused {
		t.Fatalf("the second request did not reuse the connection: the test proves nothing")
	}
	var reply struct{ Error string }
	if resp.StatusCode != http.StatusForbidden || !resp.Close || json.Unmarshal(body, &reply) != nil ||
		!strings.Contains(reply.Error, "web01") || !strings.Contains(reply.Error, "revoked") {
		t.Fatalf("after the revocation: %s, close %v, body %s; want 403, Connection: close, a JSON error naming web01",
			resp.Status, resp.Close, body)
	}
	if l := log.String(); !strings.Contains(l, "request refused") || !strings.Contains(l, "peer=web01") {
		t.Errorf("server log lacks the refusal of web01:\n%s", l)
	}
	// A new connection is refused at the handshake.
	if resp, err := client.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("a new connection of a revoked client: %s", resp.Status)
	} else if !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("a new connection of a revoked client: %v, want a handshake error", err)
	}
	// The server's log names who it refused at the handshake.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		l := log.String()
		if strings.Contains(l, "TLS handshake error") && strings.Contains(l, "the certificate of web01 (role agent") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server log lacks the refused handshake of web01:\n%s", l)
		}
	}
}
