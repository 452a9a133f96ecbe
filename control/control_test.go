package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/control"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// site is a configuration server on a test TLS listener.
type site struct {
	agents map[string]*http.Client // by name, from register
	dir    string
	srv    *control.Server
	url    string
	pass   string
	admin  *http.Client
	clock  *clock
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func newClock(t time.Time) *clock    { return &clock{t: t} }
func (s *site) call(method, path string, in, out any) error {
	return control.Call(context.Background(), s.admin, method, s.url+path, in, out)
}

func newSite(t testing.TB) *site {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	store, err := control.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	pass, err := store.SetPassphrase()
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	ck := newClock(time.Now())
	srv := &control.Server{Store: store, CA: ca, TLS: tlsConf, DataURL: "https://127.0.0.1:9443", Now: ck.Now, DataDir: dir,
		HeartbeatTimeout: 30 * time.Second}
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.TLS = srv.TLSConfig()
	ts.StartTLS()
	t.Cleanup(ts.Close)
	p := pki.Paths(dir)
	admin := clientFor(t, p.AdminCert, p.AdminKey, p.CACert)
	return &site{dir: dir, srv: srv, url: ts.URL, pass: pass, admin: admin, clock: ck}
}

func clientFor(t testing.TB, cert, key, ca string) *http.Client {
	t.Helper()
	conf, err := pki.ClientTLS(cert, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
}

// register registers name and returns a client with its new identity.
func (s *site) register(t *testing.T, name string) *http.Client {
	t.Helper()
	id, err := control.Register(context.Background(), s.url, control.Registration{Name: name}, s.pass+"\n", nil)
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	dir := t.TempDir()
	if err := id.Identity().Write(dir, name); err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "ca.crt"))
	if s.agents == nil {
		s.agents = map[string]*http.Client{}
	}
	s.agents[name] = c
	return c
}

func status(err error) int {
	var ce *control.CallError
	if errors.As(err, &ce) {
		return ce.Status
	}
	return 0
}

func TestRegisterWrongPassphraseRefusedAndRateLimited(t *testing.T) {
	s := newSite(t)
	for i := 0; i < control.DefaultRegisterFailures; i++ {
		_, err := control.Register(context.Background(), s.url, control.Registration{Name: "web01"}, "wrong-pass", nil)
		if status(err) != http.StatusForbidden || !strings.Contains(err.Error(), "wrong registration passphrase") {
			t.Fatalf("attempt %d: got %v, want 403 wrong passphrase", i, err)
		}
	}
	_, err := control.Register(context.Background(), s.url, control.Registration{Name: "web01"}, s.pass, nil)
	if status(err) != http.StatusTooManyRequests {
		t.Fatalf("after %d failures even the right passphrase: got %v, want 429", control.DefaultRegisterFailures, err)
	}
	s.clock.Add(time.Minute)
	s.register(t, "web01")
	events, err := s.srv.Store.Events(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, e := range events {
		if e.Code == control.CodeRegisterRefused {
			refused++
		}
	}
	if refused != control.DefaultRegisterFailures {
		t.Fatalf("%d refused-registration events, want %d", refused, control.DefaultRegisterFailures)
	}
	if _, err := control.Register(context.Background(), s.url, control.Registration{Name: "web01"}, s.pass, nil); status(err) != http.StatusConflict {
		t.Fatalf("second registration of web01: got %v, want 409", err)
	}
}

func TestRegisterRefusesServerWithoutPassphrase(t *testing.T) {
	s := newSite(t)
	// An impostor that relays the site's key parameters but does not know
	// the passphrase: its certificate comes with a proof it cannot make.
	ca, err := pki.Load(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := ca.Issue("web01", pki.RoleAgent, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	fake := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			var params control.RegisterParams
			resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: s.admin.Transport.(*http.Transport).TLSClientConfig}}).Get(s.url + "/v1/register")
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			json.NewDecoder(resp.Body).Decode(&params)
			json.NewEncoder(w).Encode(params)
			return
		}
		json.NewEncoder(w).Encode(control.RegisterReply{CertPEM: forged.CertPEM, CAPEM: forged.CAPEM, Proof: make([]byte, 32)})
	}))
	defer fake.Close()
	_, err = control.Register(context.Background(), fake.URL, control.Registration{Name: "web01"}, s.pass, nil)
	if !errors.Is(err, control.ErrServerProof) {
		t.Fatalf("register at an impostor: got %v, want ErrServerProof", err)
	}
}

func TestMachineRemoveRevokesEverywhere(t *testing.T) {
	s := newSite(t)
	agent := s.register(t, "web01")
	hb := control.Heartbeat{Version: "test"}
	if err := control.Call(context.Background(), agent, "POST", s.url+"/v1/agent/heartbeat", hb, new(control.AgentConfig)); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	// An agent certificate cannot do what an admin does.
	if err := control.Call(context.Background(), agent, "GET", s.url+"/v1/machines", nil, nil); status(err) != http.StatusForbidden {
		t.Fatalf("agent listing machines: got %v, want 403", err)
	}
	var removed control.RemovedMachine
	if err := s.call("DELETE", "/v1/machines/web01", nil, &removed); err != nil {
		t.Fatal(err)
	}
	if len(removed.Revoked) != 1 {
		t.Fatalf("revoked %d certificates, want 1", len(removed.Revoked))
	}
	agent.CloseIdleConnections()
	err := control.Call(context.Background(), agent, "POST", s.url+"/v1/agent/heartbeat", hb, nil)
	var opErr *net.OpError
	if err == nil || !(errors.As(err, &opErr) || strings.Contains(err.Error(), "tls") || strings.Contains(err.Error(), "certificate")) {
		t.Fatalf("heartbeat after removal: got %v, want a refused handshake", err)
	}
	// The same refusal holds on the data port: ServerTLS reads the same CRL.
	conf, err := pki.ServerTLS(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	data := httptest.NewUnstartedServer(http.NotFoundHandler())
	data.TLS = conf
	data.StartTLS()
	defer data.Close()
	if _, err := agent.Get(data.URL); err == nil {
		t.Fatal("data port accepted a removed machine's certificate")
	}
}

func TestPolicyRangesRefused(t *testing.T) {
	s := newSite(t)
	good := control.DefaultPolicy
	good.Name = "gold"
	bad := map[string]func(p *control.Policy){
		"rpo-threshold":  func(p *control.Policy) { p.RPOThreshold = 1 },
		"retention":      func(p *control.Policy) { p.Retention = 16 * 24 * 3600 },
		"crash-interval": func(p *control.Policy) { p.CrashInterval = 0 },
		"compression":    func(p *control.Policy) { p.Compression = "lz4" },
		"encryption-key": func(p *control.Policy) { p.EncryptionKey = "vault:x" },
		"failback rpo-threshold": func(p *control.Policy) {
			p.Failback.RPOThreshold = 100000
		},
	}
	for field, change := range bad {
		p := good
		change(&p)
		err := s.call("POST", "/v1/policies", p, nil)
		if status(err) != http.StatusBadRequest || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), "allowed") {
			t.Errorf("%s: got %v, want 400 naming the field and its allowed range", field, err)
		}
	}
	var got control.Policy
	if err := s.call("POST", "/v1/policies", good, &got); err != nil {
		t.Fatal(err)
	}
	if got.Failback.Name != "gold-failback" || got.Failback.CrashInterval != good.CrashInterval {
		t.Fatalf("failback policy %+v not created with the policy", got.Failback)
	}
	if err := s.call("POST", "/v1/policies", good, nil); status(err) != http.StatusConflict {
		t.Fatalf("second create: %v, want 409", err)
	}
}

func TestHeartbeatHealthAndEvents(t *testing.T) {
	s := newSite(t)
	agent := s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name, pol.RPOThreshold = "gold", 30
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	req := control.ProtectRequest{Machine: "web01", Volume: "db", Path: "/dev/sdb", Policy: "gold"}
	if err := s.call("POST", "/v1/items", req, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.call("POST", "/v1/items", req, nil); status(err) != http.StatusConflict {
		t.Fatalf("protect twice: %v, want 409", err)
	}
	rpo := 2.0
	beat := func(rpo float64) control.AgentConfig {
		var cfg control.AgentConfig
		hb := control.Heartbeat{Version: "test", Volumes: []control.VolumeReport{{Name: "db",
			Shipper: &pipeline.ShipperStatus{Volume: "db", Connected: true, RPOSeconds: &rpo}}}}
		if err := control.Call(context.Background(), agent, "POST", s.url+"/v1/agent/heartbeat", hb, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	cfg := beat(rpo)
	if len(cfg.Volumes) != 1 || cfg.Volumes[0].Path != "/dev/sdb" || cfg.Volumes[0].TagInterval != pol.CrashInterval {
		t.Fatalf("agent config %+v", cfg)
	}
	evaluate := func() control.SiteStatus {
		st, cond, err := s.srv.Evaluate()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := control.ReconcileForTest(s.srv, cond); err != nil {
			t.Fatal(err)
		}
		return st
	}
	open := func() []control.Code {
		es, _ := s.srv.Store.Events(time.Time{})
		var codes []control.Code
		for _, e := range es {
			if e.Cleared == nil {
				codes = append(codes, e.Code)
			}
		}
		return codes
	}
	if st := evaluate(); st.Health != control.Healthy || st.Items[0].State != control.StateInitial {
		t.Fatalf("status %+v, want Healthy and in initial replication (no point on the site)", st)
	}
	s.clock.Add(31 * time.Second)
	if st := evaluate(); st.Health != control.Critical || len(open()) != 1 || open()[0] != control.CodeNoHeartbeat {
		t.Fatalf("after 31 s without heartbeat: %+v, events %v", st, open())
	}
	beat(45)
	if st := evaluate(); st.Health != control.Warning || len(open()) != 1 || open()[0] != control.CodeRPOThreshold {
		t.Fatalf("RPO 45 s over 30 s: %+v, open events %v", st, open())
	}
	beat(3)
	if st := evaluate(); st.Health != control.Healthy || len(open()) != 0 {
		t.Fatalf("recovered: %+v, open events %v", st, open())
	}
}

// Cleared events older than EventRetention are pruned; open ones stay.
func TestPruneEvents(t *testing.T) {
	s := newSite(t)
	old := s.clock.Now().Add(-control.EventRetention - time.Hour)
	if _, err := s.srv.Store.Event(control.CodeMachineRemoved, "web01", "old", old); err != nil {
		t.Fatal(err)
	}
	if _, err := s.srv.Store.Event(control.CodeMachineRemoved, "web02", "new", s.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if n, err := control.PruneEventsForTest(s.srv, s.clock.Now().Add(-control.EventRetention)); err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	es, _ := s.srv.Store.Events(time.Time{})
	if len(es) != 1 || es[0].Subject != "web02" {
		t.Fatalf("events left: %+v", es)
	}
}

// A reprotecting item is judged by its failback policy: the reverse
// replication's RPO against the failback RPO threshold; the reverse
// replication takes points at the failback policy's interval.
func TestFailbackPolicyJudgesReprotect(t *testing.T) {
	s := newSite(t)
	s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name, pol.CrashInterval = "gold", 5
	pol.Failback = control.FailbackPolicy{RPOThreshold: 60, CrashInterval: 30}
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.call("POST", "/v1/items", control.ProtectRequest{Machine: "web01", Volume: "db", Path: "/dev/sdb", Policy: "gold"}, nil); err != nil {
		t.Fatal(err)
	}
	if d, ok := s.srv.FailbackTagInterval("web01", "db"); !ok || d != 30*time.Second {
		t.Fatalf("failback tag interval %v %v, want 30s", d, ok)
	}
	rpo := 90.0
	s.srv.Site = func() []pipeline.VolumeStatus {
		st := pipeline.VolumeStatus{}
		st.Info.Machine, st.Info.Name = "web01", "db"
		st.Recovery = []pipeline.RecoveryState{{Kind: pipeline.RecoveryFailover,
			Reprotect: &pipeline.ReprotectState{Shipper: &pipeline.ShipperStatus{RPOSeconds: &rpo}}}}
		return []pipeline.VolumeStatus{st}
	}
	st, _, err := s.srv.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	it := st.Items[0]
	if it.State != control.StateReprotecting || it.Health != control.Warning || len(it.Reasons) == 0 || !strings.Contains(it.Reasons[0], "failback policy") {
		t.Fatalf("reprotecting item %+v, want Warning by the failback policy's 60 s threshold", it)
	}
}

// While an agent is silent its items' RPO is the age of their newest
// point (what a disaster now could lose), judged against the threshold.
func TestSilentAgentRPOGrows(t *testing.T) {
	s := newSite(t)
	s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name, pol.RPOThreshold = "gold", 60
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.call("POST", "/v1/items", control.ProtectRequest{Machine: "web01", Volume: "db", Path: "/dev/sdb", Policy: "gold"}, nil); err != nil {
		t.Fatal(err)
	}
	point := s.clock.Now()
	s.srv.Site = func() []pipeline.VolumeStatus {
		st := pipeline.VolumeStatus{LatestPoint: &pipeline.Point{Seq: 7, Time: point}}
		st.Info.Machine, st.Info.Name = "web01", "db"
		return []pipeline.VolumeStatus{st}
	}
	s.clock.Add(90 * time.Second) // past the heartbeat timeout (30 s) and the threshold
	st, cond, err := s.srv.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	it := st.Items[0]
	if it.RPOSeconds == nil || *it.RPOSeconds < 89 || it.Health != control.Critical {
		t.Fatalf("silent agent's item %+v, want Critical with an RPO of about 90 s", it)
	}
	codes := map[control.Code]bool{}
	for c := range control.ConditionCodesForTest(cond) {
		codes[c] = true
	}
	if !codes[control.CodeNoHeartbeat] || !codes[control.CodeRPOThreshold] {
		t.Fatalf("conditions %v, want LB1001 and LB1002", codes)
	}
}

// A volume the agent cannot open (a wrong path given to protect) is
// Critical with the agent's reason, and LB1011 is raised.
func TestVolumeErrorReported(t *testing.T) {
	s := newSite(t)
	agent := s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name = "gold"
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.call("POST", "/v1/items", control.ProtectRequest{Machine: "web01", Volume: "db", Path: "/dev/nope", Policy: "gold"}, nil); err != nil {
		t.Fatal(err)
	}
	hb := control.Heartbeat{Volumes: []control.VolumeReport{{Name: "db", Error: "volume db: /dev/nope does not exist; add ,size=SIZE to create a sparse file"}}}
	if err := control.Call(context.Background(), agent, "POST", s.url+"/v1/agent/heartbeat", hb, nil); err != nil {
		t.Fatal(err)
	}
	st, cond, err := s.srv.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	if it := st.Items[0]; it.Health != control.Critical || len(it.Reasons) != 1 || !strings.Contains(it.Reasons[0], "/dev/nope does not exist") {
		t.Fatalf("item %+v, want Critical with the agent's reason", it)
	}
	if !control.ConditionCodesForTest(cond)[control.CodeVolumeError] {
		t.Fatalf("no LB1011 condition")
	}
}

// Review findings: another certificate that carries a machine's name is
// not that machine; encryption-key site is checked on update too; a full
// resync asked for stays full until the agent did it; a refused
// registration with a huge name stores none of it.
func TestIdentityAndRequestEdges(t *testing.T) {
	s := newSite(t)
	s.register(t, "web01")
	ca, err := pki.Load(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Issue("web01", pki.RoleAgent, nil, time.Hour) // 'certs issue --name web01' after the registration
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := other.Write(dir, "web01"); err != nil {
		t.Fatal(err)
	}
	impostor := clientFor(t, filepath.Join(dir, "web01.crt"), filepath.Join(dir, "web01.key"), filepath.Join(dir, "ca.crt"))
	err = control.Call(context.Background(), impostor, "POST", s.url+"/v1/agent/heartbeat", control.Heartbeat{}, nil)
	if status(err) != http.StatusForbidden || !strings.Contains(err.Error(), "serial") {
		t.Fatalf("heartbeat with another web01 certificate: %v, want 403 naming the serial", err)
	}
	pol := control.DefaultPolicy
	pol.Name = "gold"
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	site := "site"
	if err := s.call("PATCH", "/v1/policies/gold", control.PolicyChange{EncryptionKey: &site}, nil); status(err) != http.StatusBadRequest {
		t.Fatalf("update to encryption-key site on a site without a key: %v, want 400", err)
	}
	if err := s.call("POST", "/v1/items", control.ProtectRequest{Machine: "web01", Volume: "db", Path: "/dev/sdb", Policy: "gold"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.call("POST", "/v1/items/web01/db/resync", control.ResyncRequest{Full: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.call("POST", "/v1/items/web01/db/resync", control.ResyncRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	var cfg control.AgentConfig
	web01 := s.agents["web01"]
	if err := control.Call(context.Background(), web01, "POST", s.url+"/v1/agent/heartbeat", control.Heartbeat{}, &cfg); err != nil {
		t.Fatal(err)
	}
	if v := cfg.Volumes[0]; v.Resync != 2 || !v.ResyncFull {
		t.Fatalf("after resync --full then resync: %+v, want request 2, full", v)
	}
	hb := control.Heartbeat{Volumes: []control.VolumeReport{{Name: "db", ResyncDone: 2}}}
	cfg = control.AgentConfig{}
	if err := control.Call(context.Background(), web01, "POST", s.url+"/v1/agent/heartbeat", hb, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Volumes[0].ResyncFull {
		t.Fatalf("the agent did request 2; still full: %+v", cfg.Volumes[0])
	}
	big := strings.Repeat("x", 100000)
	if _, err := control.Register(context.Background(), s.url, control.Registration{Name: big}, "wrong", nil); status(err) != http.StatusForbidden {
		t.Fatalf("huge name: %v", err)
	}
	es, _ := s.srv.Store.Events(time.Time{})
	for _, e := range es {
		if len(e.Subject)+len(e.Message) > 1000 {
			t.Fatalf("an event kept %d bytes of an unauthenticated request", len(e.Subject)+len(e.Message))
		}
	}
}

// Right after a restart nothing the heartbeats tell is known yet: open
// events are not cleared then (they would flap, and come back with new
// ids), only raised.
func TestEventsDoNotFlapAtStart(t *testing.T) {
	s := newSite(t)
	s.register(t, "web01")
	pol := control.DefaultPolicy
	pol.Name = "gold"
	if err := s.call("POST", "/v1/policies", pol, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.call("POST", "/v1/items", control.ProtectRequest{Machine: "web01", Volume: "db", Path: "/dev/sdb", Policy: "gold"}, nil); err != nil {
		t.Fatal(err)
	}
	s.clock.Add(31 * time.Second)
	_, cond, _ := s.srv.Evaluate()
	if _, err := control.ReconcileForTest(s.srv, cond); err != nil {
		t.Fatal(err)
	}
	if changed, err := control.ReconcileAtStartForTest(s.srv, nil); err != nil || len(changed) != 0 {
		t.Fatalf("at start, with nothing known: %+v %v, want no change", changed, err)
	}
	if changed, err := control.ReconcileForTest(s.srv, nil); err != nil || len(changed) != 1 || changed[0].Cleared == nil {
		t.Fatalf("settled, condition gone: %+v %v, want it cleared", changed, err)
	}
}

// An unprotected volume its agent cannot let go of (in use) keeps an
// LB1011 event open with the agent's reason until it can.
func TestUnprotectPendingIsAnEvent(t *testing.T) {
	s := newSite(t)
	agent := s.register(t, "web01")
	hb := control.Heartbeat{Volumes: []control.VolumeReport{{Name: "old", Error: "unprotect pending: in use"}}}
	if err := control.Call(context.Background(), agent, "POST", s.url+"/v1/agent/heartbeat", hb, nil); err != nil {
		t.Fatal(err)
	}
	_, cond, err := s.srv.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	if !control.ConditionCodesForTest(cond)[control.CodeVolumeError] {
		t.Fatal("no LB1011 for a volume pending its unprotect")
	}
}
