package azure_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// faultProxy sits between a target and Azurite and answers some requests
// itself with the given status and Azure error code.
type faultProxy struct {
	srv      *httptest.Server
	requests atomic.Int64
	injected atomic.Int64
	fault    func(n int64, r *http.Request) (status int, code string) // status 0: pass
}

func newFaultProxy(t *testing.T, s *azuritetest.Server) *faultProxy {
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := p.requests.Add(1)
		if status, code := p.fault(n, r); status != 0 {
			p.injected.Add(1)
			io.Copy(io.Discard, r.Body)
			w.Header().Set("x-ms-error-code", code)
			w.WriteHeader(status)
			io.WriteString(w, `<?xml version="1.0" encoding="utf-8"?><Error><Code>`+code+`</Code><Message>injected by the test</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// target is a Target on container cont that reaches Azurite s through the
// proxy.
func (p *faultProxy) target(t *testing.T, s *azuritetest.Server, cont string, opts azure.Options) *azure.Target {
	t.Helper()
	creds := azure.Credentials{Account: s.Account, Key: s.Key, Endpoint: p.srv.URL + "/" + s.Account + "/"}
	tg, err := azure.New(azure.Location{Account: s.Account, Container: cont, Prefix: "lb/"}, creds, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// Throttling (503 ServerBusy), internal errors (500) and a 503 on every
// third request are retried with backoff: replication goes on and the
// replica is exact. A 403 is not retried and is ErrAuth.
func TestThrottlingIsRetried(t *testing.T) {
	ctx := context.Background()
	s := azuritetest.Start(t)
	cont := newContainer(t, s)
	p := newFaultProxy(t, s)
	// Every third distinct request is answered 503 ServerBusy, then 500,
	// and passes on its third attempt (the SDK retries up to 5 times).
	var mu sync.Mutex
	attempts := map[string]int{}
	distinct := 0
	p.fault = func(_ int64, r *http.Request) (int, string) {
		key := r.Method + " " + r.URL.String() + " " + r.Header.Get("x-ms-range") + r.Header.Get("Range")
		mu.Lock()
		defer mu.Unlock()
		if attempts[key] == 0 {
			distinct++
			if distinct%3 != 0 {
				attempts[key] = -1 // passes
			}
		}
		switch attempts[key] {
		case -1:
			return 0, ""
		case 0:
			attempts[key] = 1
			return http.StatusServiceUnavailable, "ServerBusy"
		case 1:
			attempts[key] = 2
			return http.StatusInternalServerError, "InternalError"
		}
		return 0, ""
	}
	tg := p.target(t, s, cont, azure.Options{RetryDelay: 5 * time.Millisecond})
	defer tg.Close()
	info := targets.VolumeInfo{ID: "5e1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", Name: "busy", Size: 8 << 20, BlockSize: 4096}
	rep, err := tg.Open(ctx, info)
	if err != nil {
		t.Fatalf("Open through throttling: %v", err)
	}
	m := newModel(info.Size, 3)
	for i := range 4 {
		m.scatter(t, rep, 40)
		if err := rep.Commit(ctx, targets.State{Generation: 1, Seq: uint64(i + 1)}); err != nil {
			t.Fatalf("Commit through throttling: %v", err)
		}
	}
	m.checkPoint(t, rep, 5) // CreatePoint and the reads go through the throttling too
	if p.injected.Load() < 10 {
		t.Fatalf("only %d faults injected in %d requests: the test did not test retries", p.injected.Load(), p.requests.Load())
	}
	t.Logf("%d of %d requests answered 503 or 500; all retried", p.injected.Load(), p.requests.Load())

	// A refusal is permanent: one request, no retry, ErrAuth.
	var refused atomic.Int64 // not counting the background lease renewal
	p.fault = func(_ int64, r *http.Request) (int, string) {
		if r.URL.Query().Get("comp") != "lease" {
			refused.Add(1)
		}
		return http.StatusForbidden, "AuthorizationFailure"
	}
	err = rep.Commit(ctx, targets.State{Generation: 1, Seq: 6})
	if !errors.Is(err, azure.ErrAuth) {
		t.Fatalf("Commit answered 403: %v, want ErrAuth", err)
	}
	if n := refused.Load(); n != 1 {
		t.Fatalf("a 403 was sent %d times; want once (no retry)", n)
	}
	p.fault = func(int64, *http.Request) (int, string) { return 0, "" }
	rep.Close()
}
