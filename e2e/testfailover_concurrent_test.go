package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Test failovers of different volumes started and cleaned up at the same
// moment: every request succeeds, and state.json, which a restarted server
// reads, lists exactly the test failovers running.
//
// Known bug, so skipped unless LIFEBOAT_E2E_KNOWN_BUGS=1: failover.Manager.put
// saves state.json outside its lock, so two volumes' requests write the
// same state.json.tmp at once. One of them fails with 500 ("rename
// state.json.tmp state.json: no such file or directory") after the other
// renamed it, and the later writer may save an older list (a test failover
// lost at the next restart) or, both writing one truncated file, a
// damaged state.json (the next start refuses it).
func TestTestFailoverConcurrentRequests(t *testing.T) {
	if os.Getenv("LIFEBOAT_E2E_KNOWN_BUGS") != "1" {
		t.Skip("known bug: concurrent recovery requests race on state.json.tmp (LIFEBOAT_E2E_KNOWN_BUGS=1 runs it)")
	}
	s := newSiteWith(t, nil, []string{"--recovery-nbd", "127.0.0.1:0"})
	dir := t.TempDir()
	args := []string{"--journal-dir", filepath.Join(dir, "journal"), "--tag-interval", "1s"}
	var names []string
	for i := range 4 {
		n := fmt.Sprintf("vol%d", i)
		names = append(names, n)
		args = append(args, "--volume", n+"="+filepath.Join(dir, n+".img")+",size=16MiB")
	}
	startAgent(t, append(args, s.agentArgs()...)...)
	for _, n := range names {
		s.waitPoint(n, time.Time{}, time.Minute)
	}
	c := s.admin()
	call := func(method, name string) error {
		var body io.Reader
		if method == http.MethodPost {
			body = bytes.NewReader([]byte(`{"point":"latest-processed"}`))
		}
		req, err := http.NewRequest(method, s.url()+"/v1/volumes/"+name+"/test-failover", body)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s: %s %s", method, name, resp.Status, b)
		}
		return nil
	}
	all := func(method string) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, len(names))
		for i, n := range names {
			wg.Go(func() { errs[i] = call(method, n) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	saved := func() []string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(s.dir, "recovery", "state.json"))
		if err != nil {
			t.Fatal(err)
		}
		var f struct {
			Recovery []struct {
				State struct {
					Export string `json:"export"`
				} `json:"state"`
			} `json:"recovery"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("state.json is damaged: %v\n%s", err, b)
		}
		var out []string
		for _, r := range f.Recovery {
			out = append(out, r.State.Export)
		}
		slices.Sort(out)
		return out
	}
	var want []string
	for _, n := range names {
		want = append(want, "web01."+n+".test")
	}
	for round := range 5 {
		all(http.MethodPost)
		if got := saved(); !slices.Equal(got, want) {
			t.Fatalf("round %d: state.json lists %q with %q running", round, got, want)
		}
		all(http.MethodDelete)
		if got := saved(); len(got) != 0 {
			t.Fatalf("round %d: state.json lists %q with none running", round, got)
		}
	}
}
