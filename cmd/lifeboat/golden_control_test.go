package main

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/pipeline"
)

// The configuration server's documents, through the real commands against
// a server that answers fixed values: one realistic entry, and one with
// every field set (fillAll) so that keys added later show in the files.

// controlAPI serves doc as the answer to GET path.
func controlAPI(t *testing.T, path string, doc any) (string, string) {
	t.Helper()
	dir, srv := siteAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			http.Error(w, `{"error":"unexpected `+r.Method+" "+r.URL.Path+`"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(doc)
	})
	return dir, srv.URL
}

func full[T any](t *testing.T, key string) T {
	var v T
	fillAll(t, reflect.ValueOf(&v).Elem(), key)
	return v
}

func TestGoldenSiteStatus(t *testing.T) {
	rpo, pct := 4.2, 37.0
	st := control.SiteStatus{Health: control.Warning, Items: []control.ItemStatus{
		{Machine: "web01", Volume: "db", Policy: "gold", ProcessServer: "https://dr.example:9443", State: control.StateProtected,
			RPOSeconds: &rpo, Health: control.Healthy, Reasons: []string{},
			LatestPoint: &pipeline.Point{Seq: 4711, Generation: 1, Kind: "crash", Name: "crash-000042", Time: goldenTime}},
		{Machine: "web01", Volume: "logs", Policy: "gold", ProcessServer: "https://dr.example:9443", State: control.StateInitial,
			Progress: &pct, Health: control.Warning, Reasons: []string{"initial replication of web01/logs has not moved for 10m0s"}},
		full[control.ItemStatus](t, "item"),
	}, Machines: []control.MachineView{full[control.MachineView](t, "machine")}}
	dir, url := controlAPI(t, "/v1/status", st)
	golden(t, "site_status.json", runJSON(t, "status", "--data-dir", dir, "--server", url, "--output", "json"))
}

func TestGoldenMachineList(t *testing.T) {
	last := goldenTime.Add(-2 * time.Second)
	ms := []control.MachineView{
		{Machine: control.Machine{Name: "web01", Serial: "9f3a", RegisteredAt: goldenTime.Add(-time.Hour),
			CertExpires: goldenTime.Add(365 * 24 * time.Hour), Address: "10.0.0.5"},
			LastHeartbeat: &last, Version: "v1.0.0", Items: 2, Health: control.Healthy},
		full[control.MachineView](t, "machine"),
	}
	dir, url := controlAPI(t, "/v1/machines", ms)
	golden(t, "machine_list.json", runJSON(t, "machine", "list", "--data-dir", dir, "--server", url, "--output", "json"))
}

func TestGoldenPolicyShow(t *testing.T) {
	p := control.DefaultPolicy
	p.Name, p.Created, p.Updated = "gold", goldenTime, goldenTime
	p.Failback = control.FailbackPolicy{Name: "gold-failback", RPOThreshold: p.RPOThreshold, CrashInterval: p.CrashInterval}
	dir, url := controlAPI(t, "/v1/policies/gold", p)
	golden(t, "policy_show.json", runJSON(t, "policy", "show", "gold", "--data-dir", dir, "--server", url, "--output", "json"))
	dir, url = controlAPI(t, "/v1/policies", []control.Policy{p, full[control.Policy](t, "policy")})
	golden(t, "policy_list.json", runJSON(t, "policy", "list", "--data-dir", dir, "--server", url, "--output", "json"))
}

func TestGoldenEvents(t *testing.T) {
	cleared := goldenTime.Add(time.Minute)
	es := []control.Event{
		{ID: 1, Code: control.CodeNoHeartbeat, Severity: control.Critical, Subject: "web01", Raised: goldenTime, Cleared: &cleared,
			Message: "no heartbeat from web01 for 1m0s (last at 2026-11-26T01:01:03Z)", Advice: "check that 'lifeboat agent' runs"},
		full[control.Event](t, "event"),
	}
	dir, url := controlAPI(t, "/v1/events", es)
	golden(t, "events.json", runJSON(t, "events", "--data-dir", dir, "--server", url, "--output", "json"))
}
