package metrics_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"lifeboat/internal/metrics"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets/memory"
	"lifeboat/tracker"
)

var quiet = slog.New(slog.DiscardHandler)

// scrape serves the collectors on 127.0.0.1 and parses /metrics with the
// Prometheus text parser.
func scrape(t *testing.T, cs ...prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg, err := metrics.NewRegistry("test-1", cs...)
	if err != nil {
		t.Fatal(err)
	}
	e, err := metrics.Listen("127.0.0.1:0", reg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	resp, err := http.Get("http://" + e.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the sample of name whose labels include
// want; ok false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

func openVolume(t *testing.T, size int64) *tracker.Volume {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	v := tracker.NewVolume(path, filepath.Join(dir, "journal"))
	v.Logger = quiet
	if err := v.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func TestAgentMetrics(t *testing.T) {
	db, web := openVolume(t, 4<<20), openVolume(t, 4<<20)
	var written int64
	for _, n := range []int{4096, 100, 1 << 20} {
		b := make([]byte, n)
		rand.Read(b) // no dedupe: the journal holds every byte
		if _, err := db.WriteAt(b, written); err != nil {
			t.Fatal(err)
		}
		written += int64(n)
	}
	if err := db.Trim(2<<20, 65536); err != nil {
		t.Fatal(err)
	}
	// web is replicated (its shipper is not running: nothing shipped yet).
	ship := pipeline.NewShipper(web, "web", "https://127.0.0.1:1", http.DefaultClient)
	fams := scrape(t, &metrics.AgentCollector{Volumes: []metrics.AgentVolume{
		{Name: "db", Volume: db}, {Name: "web", Volume: web, Shipper: ship}}})

	for _, tc := range []struct {
		name   string
		volume string
		want   float64
	}{
		{"lifeboat_agent_written_bytes_total", "db", float64(written)},
		{"lifeboat_agent_zeroed_bytes_total", "db", 65536},
		{"lifeboat_agent_written_bytes_total", "web", 0},
		{"lifeboat_agent_bitmap_mode", "db", 0},
		{"lifeboat_agent_shipped_bytes_total", "web", 0},
		{"lifeboat_agent_connected", "web", 0},
		{"lifeboat_agent_rpo_seconds", "web", math.Inf(1)}, // no point yet: unbounded
		{"lifeboat_agent_errors_total", "web", 0},
	} {
		got, ok := value(fams, tc.name, map[string]string{"volume": tc.volume})
		if !ok || got != tc.want {
			t.Errorf("%s{volume=%q} = %v (present %v), want %v", tc.name, tc.volume, got, ok, tc.want)
		}
	}
	if got, _ := value(fams, "lifeboat_agent_journal_bytes", map[string]string{"volume": "db"}); got < float64(written) {
		t.Errorf("journal of db: %v bytes, want at least the %d written", got, written)
	}
	if got, _ := value(fams, "lifeboat_agent_dirty_bytes", map[string]string{"volume": "db"}); got < float64(written) {
		t.Errorf("dirty bytes of db: %v, want at least the %d written", got, written)
	}
	// Shipping metrics only for a replicated volume; every error kind.
	if _, ok := value(fams, "lifeboat_agent_shipped_bytes_total", map[string]string{"volume": "db"}); ok {
		t.Error("db has no shipper but has lifeboat_agent_shipped_bytes_total")
	}
	if n := len(fams["lifeboat_agent_errors_total"].GetMetric()); n != len(pipeline.ErrorKinds) {
		t.Errorf("lifeboat_agent_errors_total has %d series, want one per kind (%d)", n, len(pipeline.ErrorKinds))
	}
	if v, ok := value(fams, "lifeboat_build_info", map[string]string{"version": "test-1"}); !ok || v != 1 {
		t.Errorf("lifeboat_build_info{version=test-1} = %v (present %v), want 1", v, ok)
	}
	if fams["go_goroutines"] == nil || fams["process_start_time_seconds"] == nil {
		t.Error("the Go runtime and process collectors are missing")
	}
}

func TestServerMetrics(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.Init(dir, nil); err != nil {
		t.Fatal(err)
	}
	conf, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := pipeline.NewServer(dir, memory.New(), conf)
	srv.Logger, srv.SpoolQuota = quiet, 3<<30
	if err := srv.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	fams := scrape(t, &metrics.ServerCollector{Server: srv})
	if v, _ := value(fams, "lifeboat_server_spool_quota_bytes", nil); v != 3<<30 {
		t.Errorf("spool quota: %v, want %d", v, int64(3<<30))
	}
	if v, ok := value(fams, "lifeboat_server_spool_bytes", nil); !ok || v != 0 {
		t.Errorf("spool bytes: %v (present %v), want 0", v, ok)
	}
	for _, k := range pipeline.ErrorKinds {
		if v, ok := value(fams, "lifeboat_server_errors_total", map[string]string{"kind": k}); !ok || v != 0 {
			t.Errorf("lifeboat_server_errors_total{kind=%q} = %v (present %v), want 0", k, v, ok)
		}
	}
}

func TestListenServesOnlyMetrics(t *testing.T) {
	reg, err := metrics.NewRegistry("v")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	e, err := metrics.Listen("127.0.0.1:0", reg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + e.Addr().String()
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /: %s, want 404", resp.Status)
	}
	if logs.Len() != 0 {
		t.Errorf("a loopback address was warned about: %s", logs.String())
	}
	e.Close()
	if _, err := http.Get(base + "/metrics"); err == nil {
		t.Error("the endpoint still answers after Close")
	}

	// Every address, beyond the loopback: warned about.
	e, err = metrics.Listen(":0", reg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if !strings.Contains(logs.String(), "without authentication") {
		t.Errorf("no warning for %s: %q", e.Addr(), logs.String())
	}
}
