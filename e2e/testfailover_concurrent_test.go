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
// (Two volumes' requests once wrote the same state.json.tmp at once: a 500,
// or an older list written last.)
func TestTestFailoverConcurrentRequests(t *testing.T) {
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
