package main

import (
	"encoding/json"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/tracker"
)

// goldenTime is the clock of every fixture.
var goldenTime = time.Date(2026, 11, 26, 1, 2, 3, 0, time.UTC)

// `lifeboat status` reads the status.json files the agent writes beside each
// volume's journal (writeStatus). Two volumes: db, as an agent shows it
// during its initial replication, and web, with every field set by fillAll,
// so that every key, including the omitempty ones and those added later,
// is in the golden file.
func TestGoldenStatus(t *testing.T) {
	dir := t.TempDir()
	db := pipeline.ShipperStatus{
		Volume: "db", Server: "https://dr.example:9443", Connected: true, LastAck: goldenTime.Add(-time.Second),
		AckedSeq: 1200, SegmentsSent: 3, BytesRaw: 12 << 20, BytesWire: 9 << 20,
		Resync: &pipeline.Progress{Reason: "initial replication", Phase: pipeline.PhaseCopying, Started: goldenTime.Add(-time.Minute),
			Done: 256 << 20, Total: 1 << 30, RateBps: 50 << 20, ETASeconds: 15.4},
		Tracker: tracker.Status{VolumeID: "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab", Generation: 1, Mode: tracker.ModeJournal,
			NextSeq: 1201, AckedSeq: 1200, Sealed: 1, JournalBytes: 4 << 20, JournalQuota: 4 << 30,
			DirtyRegions: 12288, Regions: 16384, RegionSize: 64 << 10, Size: 1 << 30},
	}
	var web pipeline.ShipperStatus
	fillAll(t, reflect.ValueOf(&web).Elem(), "status")
	web.Volume = "web"
	for _, st := range []pipeline.ShipperStatus{db, web} {
		if err := os.Mkdir(filepath.Join(dir, st.Volume), 0o755); err != nil {
			t.Fatal(err)
		}
		writeStatus(filepath.Join(dir, st.Volume, statusFileName), st)
	}
	golden(t, "status.json", runJSON(t, "status", "--journal-dir", dir, "--output", "json"))
}

// `lifeboat points list` against a process server that answers with fixed
// points: an httptest TLS server with the site's certificates (pki.Init),
// so the command goes through its real client, admin identity and decoding.
func TestGoldenPointsList(t *testing.T) {
	points := []pipeline.Point{
		{Seq: 1200, Generation: 1, Kind: "crash", Name: "initial-sync", Time: goldenTime},
		{Seq: 4711, Generation: 1, Kind: "crash", Name: "crash-000042", Time: goldenTime.Add(5 * time.Minute)},
		{Seq: 4800, Generation: 2, Kind: "app", Name: "nightly", Time: goldenTime.Add(time.Hour)},
	}
	dir, srv := siteAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/volumes/db/points" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(points)
	})
	golden(t, "points_list.json", runJSON(t, "points", "list", "--data-dir", dir, "--server", srv.URL, "--volume", "db", "--output", "json"))
}

// `lifeboat volume list` against a server that answers with fixed volumes:
// one as a volume in progress shows it, one with every field set (fillAll),
// so that keys added later are in the golden file too.
func TestGoldenVolumeList(t *testing.T) {
	var full pipeline.VolumeStatus
	fillAll(t, reflect.ValueOf(&full).Elem(), "volume")
	vols := []pipeline.VolumeStatus{{
		Info:              targets.VolumeInfo{ID: "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab", Name: "db", Machine: "web01", Size: 1 << 30, BlockSize: 4096},
		SpooledGeneration: 1, SpooledSeq: 4711, AppliedGeneration: 1, AppliedSeq: 4700, SpoolBytes: 12 << 20, Points: 3,
		LatestPoint: &pipeline.Point{Seq: 4700, Generation: 1, Kind: "crash", Name: "crash-000042", Time: goldenTime},
	}, full}
	dir, srv := siteAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/volumes" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(vols)
	})
	golden(t, "volume_list.json", runJSON(t, "volume", "list", "--data-dir", dir, "--server", srv.URL, "--output", "json"))
}

// `lifeboat journal inspect --records`: three segments written with fixed
// ids and times; the second one sealed, the third one after a gap in seqs
// and with a torn tail, so that every part of the report is there.
func TestGoldenJournalInspect(t *testing.T) {
	dir := t.TempDir()
	vol := [16]byte{0x6f, 0x1c, 0x2d, 0x3e}
	blk := func(seed byte) []byte {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = seed + byte(i*7)
		}
		return b
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	segment := func(first uint64, cfg hrl.WriterConfig, seal bool, add func(w *hrl.Writer)) {
		w, err := hrl.Create(hrl.OSFS{}, dir, hrl.Header{Generation: 2, FirstSeq: first, VolumeID: vol,
			Created: goldenTime.Add(time.Duration(first) * time.Second)}, cfg)
		must(err)
		add(w)
		if seal {
			_, err = w.Seal()
			must(err)
		}
		must(w.Close())
	}
	segment(1, hrl.WriterConfig{Dedupe: hrl.NewWindow(0)}, true, func(w *hrl.Writer) {
		_, _, err := w.AppendData(hrl.TypeWrite, 0, append(blk(1), blk(2)...)) // seq 1: WRITE 8192
		must(err)
		_, _, err = w.AppendData(hrl.TypeWrite, 1<<20, blk(1)) // seq 2: REF 4096
		must(err)
		_, err = w.AppendZero(2<<20, 8192, true) // seq 3: ZERO (trim)
		must(err)
		_, err = w.AppendTag(hrl.Tag{Kind: hrl.TagCrash, Name: "crash-1", Time: goldenTime}) // seq 4
		must(err)
	})
	segment(5, hrl.WriterConfig{}, true, func(w *hrl.Writer) {
		_, _, err := w.AppendData(hrl.TypeResync, 4096, blk(3)) // seq 5: RESYNC
		must(err)
		_, err = w.AppendTag(hrl.Tag{Kind: hrl.TagApp, Name: "app-1", Time: goldenTime.Add(time.Minute)}) // seq 6
		must(err)
	})
	segment(9, hrl.WriterConfig{}, false, func(w *hrl.Writer) { // seqs 7 and 8 are missing: a gap
		_, _, err := w.AppendData(hrl.TypeWrite, 8192, blk(4)) // seq 9
		must(err)
		_, _, err = w.AppendData(hrl.TypeWrite, 16384, blk(5)) // seq 10, torn below
		must(err)
	})
	truncateBy(t, filepath.Join(dir, hrl.SegmentName(9)), 100)
	out := runJSON(t, "journal", "inspect", "--records", "--output", "json", dir)
	golden(t, "journal_inspect.json", strings.ReplaceAll(out, dir, "JOURNAL"))
}

// fillAll sets every field of v, recursively, to a value derived from its
// JSON key: strings to the key itself, numbers to a small hash of it, times
// to goldenTime plus that many seconds, pointers to a filled value, slices
// and maps to one filled element. A field added later gets a value without
// a change here, and the others keep theirs.
func fillAll(t *testing.T, v reflect.Value, key string) {
	t.Helper()
	h := fnv.New32a()
	h.Write([]byte(key))
	n := h.Sum32()%1000 + 1
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(goldenTime.Add(time.Duration(n) * time.Second)))
			return
		}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fillAll(t, v.Field(i), name)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fillAll(t, v.Elem(), key)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fillAll(t, v.Index(0), key)
	case reflect.Map:
		e := reflect.New(v.Type().Elem()).Elem()
		fillAll(t, e, key)
		v.Set(reflect.MakeMap(v.Type()))
		v.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), e)
	case reflect.String:
		v.SetString(key)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(n % 100))
		if !v.OverflowInt(int64(n)) {
			v.SetInt(int64(n))
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(n % 100))
		if !v.OverflowUint(uint64(n)) {
			v.SetUint(uint64(n))
		}
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(n) + 0.5)
	default:
		t.Fatalf("fillAll: %s (%s) is a %s; teach fillAll that kind", key, v.Type(), v.Kind())
	}
}

// The recovery commands against a server that answers each request with a
// recovery volume that has every field set (fillAll): `test-failover list`
// its list, every other command the volume itself, one document.
func TestGoldenRecovery(t *testing.T) {
	var st pipeline.RecoveryState
	fillAll(t, reflect.ValueOf(&st).Elem(), "recovery")
	routes := map[string]bool{"POST /v1/volumes/web01/db/test-failover": true, "DELETE /v1/volumes/web01/db/test-failover": true,
		"POST /v1/volumes/web01/db/failover": true, "POST /v1/volumes/web01/db/failover/point": true,
		"POST /v1/volumes/web01/db/failover/commit": true}
	dir, srv := siteAPI(t, func(w http.ResponseWriter, r *http.Request) {
		route := r.Method + " " + r.URL.Path
		switch {
		case route == "GET /v1/recovery":
			json.NewEncoder(w).Encode([]pipeline.RecoveryState{st})
		case routes[route]:
			json.NewEncoder(w).Encode(st)
		default:
			http.Error(w, "unexpected "+route, http.StatusNotFound)
		}
	})
	flags := []string{"--data-dir", dir, "--server", srv.URL, "--output", "json"}
	golden(t, "recovery_list.json", runJSON(t, append([]string{"test-failover", "list"}, flags...)...))
	want := runJSON(t, append([]string{"test-failover", "start", "web01/db", "--point", "latest-processed"}, flags...)...)
	golden(t, "recovery_state.json", want)
	for _, args := range [][]string{{"test-failover", "cleanup", "web01/db"}, {"failover", "start", "web01/db", "--point", "12"},
		{"failover", "change-point", "web01/db", "--point", "7", "--force"}, {"failover", "commit", "web01/db"}} {
		if got := runJSON(t, append(args, flags...)...); got != want {
			t.Errorf("lifeboat %s: the document differs from test-failover start's:\n%s", strings.Join(args, " "), firstDiff(want, got))
		}
	}
}

// siteAPI is a site's data directory (pki.Init) and an HTTPS server with
// its certificates answering with h, as the process server would, closed
// with the test.
func siteAPI(t *testing.T, h http.HandlerFunc) (string, *httptest.Server) {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.Init(dir, nil); err != nil {
		t.Fatal(err)
	}
	conf, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = conf
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return dir, srv
}
