package targettest

import (
	"slices"
	"testing"

	"lifeboat/targets"
)

func testReopen(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 30)
	e.randomApply(20)
	for range 4 {
		e.point()
		e.randomApply(8)
	}
	if err := e.rep.Commit(ctx, targets.State{Generation: 1, Seq: e.seq}); err != nil {
		t.Fatal(err)
	}
	before, err := e.rep.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.reopen()
	if st, err := e.rep.State(ctx); err != nil || st != (targets.State{Generation: 1, Seq: e.seq}) {
		t.Fatalf("State after reopen = %+v, %v; want seq %d", st, err, e.seq)
	}
	if got := e.rep.Info(); got != e.info {
		t.Fatalf("Info after reopen = %+v, want %+v", got, e.info)
	}
	after, err := e.rep.Points(ctx)
	if err != nil || !slices.EqualFunc(before, after, targets.SamePoint) {
		t.Fatalf("Points after reopen = %v, %v; want %v", after, err, before)
	}
	e.checkAllPoints()
	e.checkLatest()
	// Work goes on after the reopen: more changes, deletes, reopen again.
	e.randomApply(10)
	e.deletePoint(before[1].Seq)
	e.point()
	e.randomApply(5)
	if err := e.rep.Commit(ctx, targets.State{Generation: 1, Seq: e.seq}); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	e.checkAllPoints()
	e.checkLatest()
	vols, err := e.tg.Volumes(ctx)
	if err != nil || len(vols) != 1 || vols[0] != e.info {
		t.Fatalf("Volumes after reopen = %v, %v", vols, err)
	}
}

// testRedo: changes applied but not committed are applied again after a
// reopen, from State; the result and the points are exact.
func testRedo(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 31)
	e.randomApply(20)
	e.point()
	e.randomApply(10)
	p2 := e.point()
	committed := targets.State{Generation: 1, Seq: p2.Seq}
	// Uncommitted: several Apply calls, overlapping each other.
	var pending [][]targets.Extent
	for range 4 {
		pending = append(pending, e.randomApply(10))
	}
	e.reopen()
	if st, err := e.rep.State(ctx); err != nil || st != committed {
		t.Fatalf("State after reopen = %+v, %v; want the last committed %+v", st, err, committed)
	}
	e.checkAllPoints()
	// Redo a part, reopen again, then redo all: the pipeline replays from
	// State.Seq+1 each time.
	for _, exts := range pending[:2] {
		if err := e.rep.Apply(ctx, exts); err != nil {
			t.Fatal(err)
		}
	}
	e.reopen()
	e.checkAllPoints()
	for _, exts := range pending {
		if err := e.rep.Apply(ctx, exts); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.rep.Commit(ctx, targets.State{Generation: 1, Seq: e.seq}); err != nil {
		t.Fatal(err)
	}
	e.checkAllPoints()
	e.checkLatest()
}

func testInUseAcross(t *testing.T, open func(t *testing.T) targets.Target) {
	e := newEnv(t, open, 32)
	other := open(t)
	defer other.Close()
	_, err := other.Open(ctx, e.info)
	wantErr(t, "Open through a second Target while the replica is open", err, targets.ErrInUse)
	if err := e.rep.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := other.Open(ctx, e.info)
	if err != nil {
		t.Fatalf("Open through a second Target after Close: %v", err)
	}
	rep.Close()
	e.rep = nil
}
