package azure

import (
	"strings"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/targets"
)

func ptrs(m map[string]string) map[string]*string {
	out := map[string]*string{}
	for k, v := range m {
		// Services may hand keys back in another case.
		out[strings.ToUpper(k[:1])+k[1:]] = &v
	}
	return out
}

func TestMetadataRoundTrip(t *testing.T) {
	info := targets.VolumeInfo{ID: "3f0c5a34-6a89-4d3e-9a44-9d0b6b1c2a11", Name: "db; données/ü", Size: 1 << 30, BlockSize: 4096}
	st := targets.State{Generation: 3, Seq: 123456789}
	m := stateMetadata(info, st, "0011223344556677")
	for k, v := range m {
		for _, r := range k + v {
			if r > 127 {
				t.Fatalf("metadata %s=%s is not ASCII", k, v)
			}
		}
	}
	gi, gs, kc, err := parseStateMetadata(ptrs(m))
	if err != nil || gi != info || gs != st || kc != "0011223344556677" {
		t.Fatalf("state round trip: %+v %+v %q %v", gi, gs, kc, err)
	}
	p := targets.Point{Seq: 99, Generation: 3, Kind: hrl.TagApp, Name: "before upgrade → v2", Time: time.Date(2026, 11, 26, 1, 2, 3, 456789, time.UTC)}
	gp, err := parsePointMetadata(ptrs(pointMetadata(p)))
	if err != nil || gp.Seq != p.Seq || gp.Generation != p.Generation || gp.Kind != p.Kind || gp.Name != p.Name || !gp.Time.Equal(p.Time) {
		t.Fatalf("point round trip: %+v %v", gp, err)
	}
}

func TestMetadataOfOtherBlobsIsRefused(t *testing.T) {
	if _, _, _, err := parseStateMetadata(map[string]*string{}); err == nil || !strings.Contains(err.Error(), "not a Lifeboat replica") {
		t.Fatalf("blob without metadata: %v", err)
	}
	m := stateMetadata(targets.VolumeInfo{ID: "x", Name: "n", Size: 512, BlockSize: 512}, targets.State{}, "")
	m[metaSeq] = "-1"
	if _, _, _, err := parseStateMetadata(ptrs(m)); err == nil || !strings.Contains(err.Error(), metaSeq) {
		t.Fatalf("bad seq: %v", err)
	}
	pm := pointMetadata(targets.Point{Seq: 1, Time: time.Now()})
	delete(pm, metaTime)
	if _, err := parsePointMetadata(ptrs(pm)); err == nil || !strings.Contains(err.Error(), "not a Lifeboat recovery point") {
		t.Fatalf("snapshot without time: %v", err)
	}
}
