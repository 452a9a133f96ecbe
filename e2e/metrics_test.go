package e2e

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// documentedMetric is a row of the README's metrics table.
type documentedMetric struct {
	name, typ string
	roles     []string // "agent", "server"
}

// readMetricsTable reads the Metrics section's table of the README: the
// test holds the code to what the README promises.
func readMetricsTable(t *testing.T) []documentedMetric {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []documentedMetric
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = line == "## Metrics"
			continue
		}
		if !in || !strings.HasPrefix(line, "| `lifeboat_") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 5 {
			t.Fatalf("README metrics row with %d cells, want 5 (name, type, labels, role, meaning): %s", len(cells), line)
		}
		m := documentedMetric{name: strings.Trim(strings.TrimSpace(cells[0]), "`"), typ: strings.TrimSpace(cells[1])}
		for _, r := range strings.Split(cells[3], ",") {
			if r = strings.TrimSpace(r); r == "agent" || r == "server" {
				m.roles = append(m.roles, r)
			}
		}
		if len(m.roles) == 0 {
			t.Fatalf("README metric %s names no role (agent or server): %s", m.name, line)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		t.Fatal("no metrics table in README.md's Metrics section")
	}
	return out
}

// scrapeMetrics gets http://addr/metrics and parses it with the Prometheus
// text parser.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET http://%s/metrics: %s", addr, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("http://%s/metrics does not parse: %v", addr, err)
	}
	return fams
}

// sample is the value of name's sample whose labels include want.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
next:
	for _, m := range fams[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		if m.Counter != nil {
			return m.Counter.GetValue(), true
		}
		return m.Gauge.GetValue(), true
	}
	return 0, false
}

// A real server and agent with --metrics-listen: after writes through NBD
// are replicated, both /metrics parse, carry every name the README
// documents for their role with its type and no undocumented lifeboat_
// name, and the byte counts agree with what was written.
func TestMetricsEndpoints(t *testing.T) {
	need(t, "qemu-io")
	serverAddr, agentAddr := freeAddr(t), freeAddr(t)
	s := newSiteWith(t, nil, []string{"--metrics-listen", serverAddr})
	p := protect(t, s, 64<<20, 1<<20, "--metrics-listen", agentAddr)
	start := time.Now()
	const written = 3 << 20
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 8M 3M", "-c", "flush", p.uri)
	p.settle(start)

	scraped := map[string]map[string]*dto.MetricFamily{"server": scrapeMetrics(t, serverAddr), "agent": scrapeMetrics(t, agentAddr)}
	doc := map[string]bool{}
	for _, m := range readMetricsTable(t) {
		doc[m.name] = true
		for _, role := range m.roles {
			f := scraped[role][m.name]
			if f == nil {
				t.Errorf("%s: documented for the %s, not in its /metrics", m.name, role)
				continue
			}
			if got := strings.ToLower(f.GetType().String()); got != m.typ {
				t.Errorf("%s on the %s: type %s, README says %s", m.name, role, got, m.typ)
			}
		}
	}
	for role, fams := range scraped {
		for name := range fams {
			if strings.HasPrefix(name, "lifeboat_") && !doc[name] {
				t.Errorf("%s: exposed by the %s, not documented in README.md's Metrics table", name, role)
			}
		}
	}

	agent, server := scraped["agent"], scraped["server"]
	vol := map[string]string{"volume": "disk"}
	if v, _ := sample(agent, "lifeboat_agent_written_bytes_total", vol); v < written {
		t.Errorf("agent: written %v bytes, want at least the %d qemu-io wrote", v, written)
	}
	shipped, _ := sample(agent, "lifeboat_agent_shipped_bytes_total", vol)
	if shipped <= 0 {
		t.Errorf("agent: shipped %v bytes after replication, want > 0", shipped)
	}
	if v, _ := sample(agent, "lifeboat_agent_connected", vol); v != 1 {
		t.Errorf("agent: connected = %v, want 1", v)
	}
	if v, ok := sample(agent, "lifeboat_agent_rpo_seconds", vol); !ok || v < 0 || v > 60 {
		t.Errorf("agent: RPO %v s (present %v), want a settled one", v, ok)
	}
	srvVol := map[string]string{"machine": "web01", "volume": "disk"}
	// At most: a segment resent after a lost answer counts twice at the agent.
	if v, _ := sample(server, "lifeboat_server_received_bytes_total", srvVol); v <= 0 || v > shipped {
		t.Errorf("server: received %v bytes, the agent shipped %v; want > 0 and at most that", v, shipped)
	}
	if v, _ := sample(server, "lifeboat_server_recovery_points", srvVol); v < 2 {
		t.Errorf("server: %v recovery points, want the initial one and the one after the writes", v)
	}
	if v, _ := sample(server, "lifeboat_server_spool_quota_bytes", nil); v != 8<<30 {
		t.Errorf("server: spool quota %v, want the default 8GiB", v)
	}
	if v, _ := sample(server, "lifeboat_server_latest_point_timestamp_seconds", srvVol); v < float64(start.Unix()) {
		t.Errorf("server: latest point at %v, want after the writes began (%d)", v, start.Unix())
	}
}
