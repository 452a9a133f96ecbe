package pipeline_test

import (
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/targets/file"
)

// diskBytes is the space the files below dir take on disk.
func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The server prunes on the tiered schedule by its clock: when the points
// are three hours old, the server keeps exactly what Retention.Select
// keeps (one per hour), and the file target gives the space of the pruned
// points' data back.
func TestRetentionPrunesOnScheduleAndReclaimsSpace(t *testing.T) {
	var offset atomic.Int64 // the server's clock runs this far ahead
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	replicas := t.TempDir()
	s := &site{t: t, dir: t.TempDir(), target: file.New(replicas),
		configure: func(srv *pipeline.Server) { srv.Now = now }}
	s.open()
	const size = 4 << 20
	a := newAgentVol(t, s, size, 0, s.client("agent1", pki.RoleAgent))
	a.waitSynced()
	rng := rand.New(rand.NewPCG(11, 12))
	full := func() {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := a.vol.WriteAt(b, 0); err != nil {
			t.Fatal(err)
		}
	}
	want := map[uint64]string{}
	for range 6 { // every point keeps a whole volume of old data
		full()
		seq, sum := a.tag("full rewrite")
		want[seq] = sum
	}
	s.checkPoints(a, want)
	admin := s.client("admin", pki.RoleAdmin)
	before := s.points(admin, "vol")
	used := diskBytes(t, replicas)
	if len(before) < 7 || used < 6*size {
		t.Fatalf("%d points using %d bytes before pruning; want ≥ 7 points and ≥ %d bytes", len(before), used, 6*size)
	}

	// Three hours later (by the server's clock) the next tag prunes.
	offset.Store(int64(3 * time.Hour))
	full()
	seq, sum := a.tag("three hours later")
	s.checkPoints(a, map[uint64]string{seq: sum})
	// The point is listed as soon as it exists; pruning follows it.
	var got, exp []uint64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		after := s.points(admin, "vol")
		all := make([]targets.Point, 0, len(before)+1)
		for _, p := range append(before, after[len(after)-1]) {
			all = append(all, targets.Point{Seq: p.Seq, Generation: p.Generation, Time: p.Time})
		}
		keep, _ := (targets.Retention{Window: targets.DefaultRetentionWindow}).Select(all, now())
		got, exp = got[:0], exp[:0]
		for _, p := range after {
			got = append(got, p.Seq)
		}
		for _, p := range keep {
			exp = append(exp, p.Seq)
		}
		slices.Sort(exp)
		if slices.Equal(got, exp) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after pruning the server keeps points %v; the schedule keeps %v", got, exp)
		}
	}
	if len(got) > 3 {
		t.Fatalf("%d points of the same hour kept three hours later: %v", len(got), got)
	}
	if reclaimed := used - diskBytes(t, replicas); reclaimed < int64(len(before)-len(got))*size/2 {
		t.Fatalf("pruning %d points reclaimed %d bytes (%d before)", len(before)+1-len(got), reclaimed, used)
	}
	t.Logf("kept points %v of %d; reclaimed %d of %d bytes", got, len(before)+1, used-diskBytes(t, replicas), used)
	for _, p := range s.points(admin, "vol") { // the points kept still open and are exact
		if w, ok := want[p.Seq]; ok {
			if got := s.pointSum(admin, "vol", p.Seq); got != w {
				t.Fatalf("point %d after pruning: %s, want %s", p.Seq, got, w)
			}
		}
	}
}
