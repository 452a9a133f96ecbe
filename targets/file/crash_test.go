package file_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/hrl"
	"lifeboat/hrl/hrltest"
	"lifeboat/targets"
	"lifeboat/targets/file"
)

const (
	crashDir  = "/t"
	crashSize = 10*4096 + 1536
)

var (
	ctx        = context.Background()
	crashInfo  = targets.VolumeInfo{ID: "5e0b1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4", Name: "crash", Size: crashSize, BlockSize: 4096}
	crashImage = filepath.Join(crashDir, crashInfo.ID, "replica.img")
)

type opKind int

const (
	opApply opKind = iota
	opCommit
	opPoint
	opDelete
)

// crashOp is one call of the workload; apply, commit and point carry the
// seq of the records they stand for, as the pipeline would.
type crashOp struct {
	kind opKind
	seq  uint64
	exts []targets.Extent
	del  uint64 // opDelete: the point's seq
}

func (o crashOp) String() string {
	return [...]string{"apply", "commit", "point", "delete"}[o.kind] + fmt.Sprint(o.seq, o.del)
}

// crashWorkload is a fixed script and the content after every seq.
type crashWorkload struct {
	ops     []crashOp
	content map[uint64][]byte // content after the records up to seq
}

// crashScript is the workload: a apply, c commit, P point, D0/D1/Dn
// delete the oldest, second oldest, newest point. It deletes points of
// every position, including the newest while its undo log holds entries
// of uncommitted applies.
const crashScript = "a a c P a a P a c P a D1 a P a a Dn a c D0 P a a c P a D1 a"

func newCrashWorkload(seed uint64) *crashWorkload {
	r := rand.New(rand.NewPCG(seed, 5))
	w := &crashWorkload{content: map[uint64][]byte{0: make([]byte, crashSize)}}
	cur := make([]byte, crashSize)
	var seq uint64
	var live []uint64
	for _, step := range strings.Fields(crashScript) {
		switch step {
		case "a":
			seq++
			var exts []targets.Extent
			for range 1 + r.IntN(4) {
				off := r.Int64N(crashSize/4096) * 4096
				n := min(int64(1+r.IntN(3))*4096, crashSize-off)
				if r.IntN(4) == 0 { // unaligned
					off = r.Int64N(crashSize - 1)
					n = 1 + r.Int64N(min(9000, crashSize-off))
				}
				if r.IntN(5) == 0 {
					exts = append(exts, targets.Extent{Off: off, Len: n, Trim: true})
					clear(cur[off : off+n])
					continue
				}
				d := make([]byte, n)
				for j := range d {
					d[j] = byte(r.Uint32())
				}
				exts = append(exts, targets.Extent{Off: off, Data: d})
				copy(cur[off:], d)
			}
			w.ops = append(w.ops, crashOp{kind: opApply, seq: seq, exts: exts})
		case "c":
			w.ops = append(w.ops, crashOp{kind: opCommit, seq: seq})
		case "P":
			seq++
			w.ops = append(w.ops, crashOp{kind: opPoint, seq: seq})
			live = append(live, seq)
		default:
			j := map[string]int{"D0": 0, "D1": 1, "Dn": len(live) - 1}[step]
			w.ops = append(w.ops, crashOp{kind: opDelete, del: live[j]})
			live = append(live[:j], live[j+1:]...)
		}
		w.content[seq] = bytes.Clone(cur)
	}
	return w
}

func pointOf(seq uint64) targets.Point {
	return targets.Point{Seq: seq, Generation: 1, Kind: hrl.TagCrash, Name: fmt.Sprint("p", seq),
		Time: time.Unix(1700000000+int64(seq), 0)}
}

// run runs the workload against rep: the applies, points and commits of
// seqs after after, and every delete (in a redo, a point deleted before
// the crash may be gone already). It stops at the first error.
func (w *crashWorkload) run(rep targets.Replica, after uint64, redo bool, out *crashOutcome) error {
	for _, o := range w.ops {
		var err error
		switch o.kind {
		case opApply:
			if o.seq > after {
				err = rep.Apply(ctx, o.exts)
			}
		case opCommit:
			if o.seq > after {
				out.inflight = &targets.State{Generation: 1, Seq: o.seq}
				if err = rep.Commit(ctx, *out.inflight); err == nil {
					out.state, out.inflight = *out.inflight, nil
				}
			}
		case opPoint:
			if o.seq > after {
				out.inflight = &targets.State{Generation: 1, Seq: o.seq}
				out.creating = o.seq
				if err = rep.CreatePoint(ctx, pointOf(o.seq)); err == nil {
					out.state, out.inflight, out.creating = *out.inflight, nil, 0
					out.points[o.seq] = true
				}
			}
		case opDelete:
			out.deleting = o.del
			err = rep.DeletePoint(ctx, o.del)
			if errors.Is(err, targets.ErrNotFound) && redo && o.del <= after {
				err = nil // deleted before the crash
			}
			if err == nil {
				delete(out.points, o.del)
				out.deleting = 0
			}
		}
		if err != nil {
			return fmt.Errorf("%v: %w", o, err)
		}
	}
	return nil
}

// crashOutcome is what the workload saw returned before the crash.
type crashOutcome struct {
	state    targets.State  // last committed state that returned
	inflight *targets.State // state of the Commit or CreatePoint cut short
	points   map[uint64]bool
	creating uint64 // CreatePoint cut short
	deleting uint64 // DeletePoint cut short
}

func crashTarget(fsys *hrltest.CrashFS) *file.Target {
	tg := file.New(crashDir)
	tg.FS = fsys
	tg.Logger = quiet
	return tg
}

// TestCrashAtEveryOperation cuts power at every file operation of a
// workload of applies, commits, point creations and deletions, in three
// crash modes, and checks after reopening: State is a committed state;
// every point whose CreatePoint returned (and whose DeletePoint did not) is
// there and exact; redoing the workload from State gives the reference
// content in replica.img and in every point.
func TestCrashAtEveryOperation(t *testing.T) {
	w := newCrashWorkload(3)
	probe := hrltest.New()
	tg := crashTarget(probe)
	rep, err := tg.Open(ctx, crashInfo)
	if err != nil {
		t.Fatal(err)
	}
	out := &crashOutcome{points: map[uint64]bool{}}
	if err := w.run(rep, 0, false, out); err != nil {
		t.Fatal(err)
	}
	rep.Close()
	total := probe.Ops()
	step := 1
	if testing.Short() {
		step = 5
	}
	modes := []hrltest.CrashMode{hrltest.DropUnsynced, hrltest.KeepPrefix, hrltest.KeepRandom}
	for n := 0; n <= total+1; n += step {
		for _, mode := range modes {
			t.Run(fmt.Sprintf("op%d/%v", n, mode), func(t *testing.T) {
				t.Parallel()
				fsys := hrltest.New()
				fsys.CrashAfter(n)
				out := &crashOutcome{points: map[uint64]bool{}}
				tg := crashTarget(fsys)
				rep, err := tg.Open(ctx, crashInfo)
				if err == nil {
					err = w.run(rep, 0, false, out)
				}
				if err != nil && !errors.Is(err, hrltest.ErrCrashed) {
					t.Fatalf("workload: unexpected error %v", err)
				}
				fsys.CrashAfter(0)
				tg.Close()
				fsys.Crash(mode, rand.New(rand.NewPCG(uint64(n), 9)))
				w.check(t, fsys, out)
			})
		}
	}
}

func (w *crashWorkload) check(t *testing.T, fsys *hrltest.CrashFS, out *crashOutcome) {
	t.Helper()
	tg := crashTarget(fsys)
	defer tg.Close()
	rep, err := tg.Open(ctx, crashInfo)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	st, err := rep.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st != out.state && (out.inflight == nil || st != *out.inflight) {
		t.Fatalf("State after crash = %+v; want the last committed %+v or the one in flight %v", st, out.state, out.inflight)
	}
	w.checkPoints(t, rep, out, true)
	// The pipeline replays from State.Seq+1.
	redo := &crashOutcome{state: st, points: map[uint64]bool{}}
	ps, _ := rep.Points(ctx)
	for _, p := range ps {
		redo.points[p.Seq] = true
	}
	if err := w.run(rep, st.Seq, true, redo); err != nil {
		t.Fatalf("redo from seq %d: %v", st.Seq, err)
	}
	w.checkPoints(t, rep, redo, false)
	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := fsys.ReadFile(crashImage)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img, w.content[lastSeq(w)]) {
		t.Fatal("replica.img after the redo differs from the reference")
	}
}

func lastSeq(w *crashWorkload) uint64 {
	var s uint64
	for _, o := range w.ops {
		s = max(s, o.seq)
	}
	return s
}

// checkPoints checks that the replica has the points out expects (give or
// take the ones cut short when crashed is set) and that each is exact.
func (w *crashWorkload) checkPoints(t *testing.T, rep targets.Replica, out *crashOutcome, crashed bool) {
	t.Helper()
	ps, err := rep.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[uint64]bool{}
	for _, p := range ps {
		have[p.Seq] = true
		if !out.points[p.Seq] && !(crashed && (p.Seq == out.creating || p.Seq == out.deleting)) {
			t.Fatalf("point %d is there; the workload never completed its creation or deleted it", p.Seq)
		}
		if !targets.SamePoint(p, pointOf(p.Seq)) {
			t.Fatalf("point %+v, want %+v", p, pointOf(p.Seq))
		}
		pr, err := rep.OpenPoint(ctx, p.Seq)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, pr.Size())
		if _, err := pr.ReadAt(got, 0); err != nil {
			t.Fatalf("read point %d: %v", p.Seq, err)
		}
		if !bytes.Equal(got, w.content[p.Seq]) {
			t.Fatalf("point %d differs from its reference content", p.Seq)
		}
	}
	for seq := range out.points {
		if !have[seq] && !(crashed && seq == out.deleting) {
			t.Fatalf("point %d, whose creation returned, is missing", seq)
		}
	}
}
